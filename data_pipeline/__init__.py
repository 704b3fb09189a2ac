"""Data preparation: model files, downloads, synthetic faces, datasets."""
