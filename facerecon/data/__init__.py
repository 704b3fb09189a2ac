"""Data: photos, the network's input preprocessing, label statistics, crops,
synthetic faces, labelled folders and the Grain input pipeline."""
