"""The facerecon_faces tfds data set (see facerecon_faces_dataset_builder)."""
