"""Defaults shared by every config; a config file starts from these."""

import dataclasses

import ml_collections

from facerecon.data import synthetic


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Morphable model: 'embedded' (the built-in procedural face, ~3.4k
  # vertices), 'embedded:<grid>' (e.g. 'embedded:253', BFM-scale), or the path
  # of a model file written by `python -m data_pipeline.prepare_bfm`.
  config.model = "embedded"
  config.image_size = 200
  config.seed = 0

  # --- --mode=train: CoarseNet (facerecon.train.train_and_evaluate) ---
  config.num_iterations = 4            # refinement iterations, each with its own weights
  config.backbone = "resnet_v1_101"    # resnet_v1_50/101/152, vgg_16, small
  config.backbone_kwargs = ml_collections.ConfigDict()
  config.dtype = "float32"             # backbone compute; "bfloat16" on GPU/TPU
  # ImageNet initialisation: an .npz from `python -m data_pipeline.convert_slim`
  # (resnet_v1_101.ckpt for resnet_v1_101, vgg_16.ckpt for vgg_16).
  config.pretrained = ml_collections.config_dict.placeholder(str)
  config.render_backend = ml_collections.config_dict.placeholder(str)  # None: per platform

  config.data = ml_collections.ConfigDict()
  config.data.source = "synthetic"     # 'synthetic' (rendered on the fly) or 'tfds'
  config.data.name = "facerecon_faces/synthetic"  # tfds: the data set
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # tfds data dir
  config.data.statistics = ml_collections.config_dict.placeholder(str)  # tfds: statistics.npz
  config.data.num_workers = 0          # tfds: Grain worker processes
  # synthetic: facerecon.synthetic.FacePrior's fields (pose ranges in
  # degrees, shape/expression sigma, lighting, ...), e.g. --config.data.prior.yaw="(-45.0,45.0)".
  config.data.prior = ml_collections.ConfigDict(dataclasses.asdict(synthetic.FacePrior()))
  config.data.statistics_samples = 1024  # synthetic: faces for the statistics
  config.data.statistics_seed = 1
  config.data.validation_seed = 2
  config.data.test_seed = 3           # --mode=evaluate --input=synthetic

  config.batch_size = 32               # global, split over all devices
  config.num_train_steps = 70_000      # the original's schedule
  config.learning_rate = 1e-4
  config.schedule = "cosine"           # or 'constant'
  config.warmup_steps = 1000
  config.grad_clip_norm = 1.0
  config.weight_decay = 1e-4           # declared by the original, now applied
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.max_bad_steps = 20            # non-finite steps in a row before stopping

  config.loss = ml_collections.ConfigDict()  # facerecon.losses.LossWeights
  config.loss.pose = 1.0
  config.loss.shape = 1.0
  config.loss.expression = 1.0
  config.loss.vertex = 1.0
  config.loss.render = 1.0
  config.loss.landmark = 0.0

  config.log_every = 50
  config.eval_every = 1000
  config.eval_batches = 8
  config.eval_batch_size = 32
  config.eval_pictures = 4              # faces in reconstructions.png and TensorBoard
  config.best_metric = "vertex_error"  # lowest evaluation value kept under best/
  config.checkpoint_every = 1000
  config.keep_checkpoints = 5

  # --- Stage 2: FineNet (facerecon.train_fine), run by --mode=train after
  # CoarseNet when fine.num_train_steps > 0, in <workdir>/fine ---
  config.fine = ml_collections.ConfigDict()
  config.fine.num_train_steps = 0      # 0: no FineNet stage
  # The CoarseNet run to refine (its best/ checkpoint); None: --workdir,
  # i.e. the CoarseNet this same command trained. Set it (and
  # num_train_steps = 0 for CoarseNet) to train only FineNet.
  config.fine.coarse_workdir = ml_collections.config_dict.placeholder(str)
  config.fine.end_to_end = False       # also fine-tune CoarseNet through the renderer
  config.fine.widths = (64, 128, 256)  # VGG-16 conv1..conv3 channels (the paper's)
  config.fine.head = (50, 50, 10)      # 1x1 convs of the hypercolumn head (the original's)
  # ImageNet initialisation: vgg_16.npz from `python -m data_pipeline.convert_slim`
  # (needs the paper's widths).
  config.fine.pretrained = ml_collections.config_dict.placeholder(str)
  config.fine.seed = 10
  config.fine.data = ml_collections.ConfigDict()
  # 'synthetic' (rendered faces; labels used only to evaluate), 'tfds'
  # (images of fine.data.name, e.g. facerecon_faces/vggface) or 'folder'
  # (fine.data.folder: any folder of face photos; every 10th is validation).
  config.fine.data.source = "synthetic"
  config.fine.data.name = "facerecon_faces/vggface"
  config.fine.data.data_dir = ml_collections.config_dict.placeholder(str)
  config.fine.data.folder = ml_collections.config_dict.placeholder(str)
  config.fine.data.num_workers = 0
  config.fine.loss = ml_collections.ConfigDict()  # facerecon.train_fine.FineLossWeights
  # The paper quotes sfs 1, fidelity 5e-2, smoothness 1. In this loss's units
  # (facerecon.train_fine) fidelity 5e-2 let FineNet bend the synthetic faces
  # (worse depth and normals than CoarseNet); 2.0 was the best of the tried values.
  config.fine.loss.sfs = 1.0
  config.fine.loss.fidelity = 2.0
  config.fine.loss.smoothness = 1.0
  config.fine.batch_size = 16
  config.fine.learning_rate = 1e-4
  config.fine.schedule = "cosine"
  config.fine.warmup_steps = 100
  config.fine.grad_clip_norm = 1.0
  config.fine.weight_decay = 1e-4
  config.fine.adam_b1 = 0.9
  config.fine.adam_b2 = 0.999
  config.fine.max_bad_steps = 20
  config.fine.log_every = 50
  config.fine.eval_every = 1000
  config.fine.eval_batches = 8
  config.fine.eval_batch_size = 16
  config.fine.eval_pictures = 4
  # Synthetic data: 'normal_error' (against the true detailed surface);
  # photos have no truth: 'loss' (the unsupervised loss on held-out photos).
  config.fine.best_metric = "loss"
  config.fine.checkpoint_every = 1000
  config.fine.keep_checkpoints = 5

  # --mode=preview: a picture of the model and a few sampled faces.
  config.preview = ml_collections.ConfigDict()
  config.preview.num_identities = 4    # random shape + texture, frontal
  config.preview.num_expressions = 4   # random expressions on the mean face
  config.preview.tile_size = 200       # pixels per face in the picture
  return config
