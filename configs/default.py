"""Defaults shared by every config; a config file starts from these."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Morphable model: 'embedded' (the built-in procedural face, ~3.4k
  # vertices), 'embedded:<grid>' (e.g. 'embedded:253', BFM-scale), or the path
  # of a model file written by `python -m data_pipeline.prepare_bfm`.
  config.model = "embedded"
  config.image_size = 200
  config.seed = 0

  # --mode=preview: a picture of the model and a few sampled faces.
  config.preview = ml_collections.ConfigDict()
  config.preview.num_identities = 4    # random shape + texture, frontal
  config.preview.num_expressions = 4   # random expressions on the mean face
  config.preview.tile_size = 200       # pixels per face in the picture
  return config
