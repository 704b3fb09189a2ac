"""Defaults shared by every config; a config file starts from these.

The layout:
- what the networks are and see: `model` (the face model), `image_size`,
  `dtype` and `render_backend`;
- `synthetic`: the synthetic faces, wherever a stage reads them (their
  prior, the statistics they give, the seeds of the validation and test
  faces);
- the two training stages, `coarse` (CoarseNet: labels) and `fine` (FineNet:
  photos only), with one schema: the network, its `loss` weights and its
  `data`, then the fields every stage has (`_stage`: optimiser, schedule,
  evaluation, checkpoints).

Every field can be overridden on the command line, e.g.
`--config.coarse.batch_size=64` or `--config.synthetic.prior.yaw="(-45.0,45.0)"`.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def _stage(*, seed: int, num_train_steps: int, batch_size: int, warmup_steps: int,
           eval_batch_size: int, best_metric: str) -> ml_collections.ConfigDict:
  """The fields every training stage has (facerecon.training.loop)."""
  stage = ml_collections.ConfigDict()
  stage.seed = seed
  stage.num_train_steps = num_train_steps  # 0: the stage does not run
  stage.batch_size = batch_size            # global, split over all devices
  stage.learning_rate = 1e-4
  stage.schedule = "cosine"                # or 'constant' (after the linear warm-up)
  stage.warmup_steps = warmup_steps
  stage.grad_clip_norm = 1.0               # 0: no clipping
  stage.weight_decay = 1e-4                # declared by the original, now applied
  stage.adam_b1 = 0.9
  stage.adam_b2 = 0.999
  stage.max_bad_steps = 20                 # non-finite steps in a row before stopping
  # ImageNet initialisation: an .npz from `python -m data_pipeline.convert_slim`.
  stage.pretrained = placeholder(str)
  stage.log_every = 50
  stage.eval_every = 1000
  stage.eval_batches = 8
  stage.eval_batch_size = eval_batch_size
  stage.eval_pictures = 4                  # faces in the evaluation picture
  stage.best_metric = best_metric          # lowest evaluation value kept under best/
  stage.checkpoint_every = 1000
  stage.keep_checkpoints = 5
  return stage


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # The face model (facerecon.face_models): 'embedded' (the built-in
  # procedural face, ~3.4k vertices), 'embedded:<grid>' (e.g. 'embedded:253',
  # BFM-scale), or the path of a model file (`python -m data_pipeline.prepare_bfm`).
  config.model = "embedded"
  config.image_size = 200
  config.dtype = "float32"             # the backbones' compute; "bfloat16" on GPU/TPU
  config.render_backend = placeholder(str)  # None: the platform's fastest

  # Synthetic faces (facerecon.data.synthetic), rendered on the fly.
  config.synthetic = ml_collections.ConfigDict()
  # facerecon.data.synthetic.FacePrior's fields (angles in degrees).
  config.synthetic.prior = ml_collections.ConfigDict(dict(
      shape_sigma=1.0, expression_sigma=1.0, expression_active=0.15,
      expression_archetypes=0.0, texture_sigma=1.0,
      pitch=(-75.0, 45.0), yaw=(-90.0, 90.0), roll=(-30.0, 30.0), frontal_fraction=0.0,
      fill=(0.55, 0.85), frame_by_landmarks=False, shift=0.08,
      camera_distance=(0.0, 0.0), ambient=(0.45, 0.9),
      directional=(0.0, 0.6), fill_light=(0.0, 0.0), light_from_above=0.0, light_colour=0.0,
      second_order_light=False, specular=False, cast_shadows=False,
      gain=(0.85, 1.15), offset=(-0.05, 0.05), contrast=(0.6, 1.0), noise=0.01,
      procedural_albedo=False, hair=1.0, photo_backgrounds=0.0, clutter=0.0, occluders=0.0,
      long_hair=0.0, glasses=0.0, headwear=0.0, other_heads=0.0,
      blur=0.0, grey=0.0, jpeg=0.0, luminance_std=(0.0, 0.0), luminance_mean=(0.0, 0.0),
      saturation=(0.0, 0.0), background_saturation=(0.0, 0.0),
      detail=(0.002, 0.006), detail_frequency=(4.0, 10.0), wrinkles=(0.0, 0.0),
      marks=(0.0, 0.0)))
  config.synthetic.statistics_samples = 1024  # faces the label statistics come from
  config.synthetic.statistics_seed = 1
  config.synthetic.validation_seed = 2
  config.synthetic.test_seed = 3       # --mode=evaluate --input=synthetic

  # --- Stage 1: CoarseNet (facerecon.training.coarse) ---
  config.coarse = _stage(seed=0, num_train_steps=70_000, batch_size=32, warmup_steps=1000,
                         eval_batch_size=32, best_metric="vertex_error")
  # Fine-tuning: a run directory whose best CoarseNet (and statistics) a new
  # run starts from, e.g. facerecon/assets/run, the shipped one.
  config.coarse.init_from = placeholder(str)
  config.coarse.num_iterations = 4     # refinement iterations, each with its own weights
  config.coarse.backbone = "resnet_v1_101"  # resnet_v1_50/101/152, vgg_16, mobilenet_v1, small
  config.coarse.backbone_kwargs = ml_collections.ConfigDict()
  config.coarse.loss = ml_collections.ConfigDict()  # facerecon.losses.LossWeights
  config.coarse.loss.pose = 1.0
  config.coarse.loss.shape = 1.0
  config.coarse.loss.expression = 1.0
  config.coarse.loss.vertex = 1.0
  config.coarse.loss.render = 1.0
  config.coarse.loss.landmark = 0.0
  config.coarse.data = ml_collections.ConfigDict()
  config.coarse.data.source = "synthetic"  # 'synthetic' (rendered on the fly) or 'tfds'
  config.coarse.data.name = "facerecon_faces/synthetic"  # tfds: the data set
  config.coarse.data.data_dir = placeholder(str)    # tfds: its data dir
  config.coarse.data.statistics = placeholder(str)  # tfds: its statistics.npz
  config.coarse.data.num_workers = 0   # tfds: Grain worker processes

  # --- Stage 2: FineNet (facerecon.training.fine), after CoarseNet, in <workdir>/fine ---
  config.fine = _stage(seed=10, num_train_steps=0, batch_size=16, warmup_steps=100,
                       eval_batch_size=16, best_metric="loss")
  # The CoarseNet run to refine (its best/ checkpoint); None: --workdir,
  # i.e. the CoarseNet this same command trained. Set it (and
  # coarse.num_train_steps = 0) to train only FineNet.
  config.fine.coarse_workdir = placeholder(str)
  config.fine.end_to_end = False       # also fine-tune CoarseNet through the renderer
  # A run whose best FineNet this one starts from (fine-tuning it, e.g. over
  # a newer CoarseNet); it must have the same FineNet (widths, head, size).
  config.fine.init_from = placeholder(str)
  # FineNet's photos' side (None: image_size). Larger than CoarseNet's, so
  # detail a pixel wide at CoarseNet's size is there to see; CoarseNet gets
  # the same photos shrunk to image_size, and reconstruct crops at this size.
  config.fine.image_size = placeholder(int)
  config.fine.widths = (64, 128, 256)  # VGG-16 conv1..conv3 channels (the paper's)
  config.fine.head = (50, 50, 10)      # 1x1 convs of the hypercolumn head (the original's)
  config.fine.loss = ml_collections.ConfigDict()  # facerecon.losses.FineLossWeights
  # The paper quotes sfs 1, fidelity 5e-2, smoothness 1. In this loss's units
  # (facerecon.losses.fine_loss) fidelity 5e-2 let FineNet bend the synthetic
  # faces (worse depth and normals than CoarseNet); 2.0 was the best tried.
  config.fine.loss.sfs = 1.0
  config.fine.loss.fidelity = 2.0
  config.fine.loss.smoothness = 1.0
  # Supervised terms against the synthetic faces' true detailed surface
  # (absolute depth difference, 1 - cosine of the normals); 0: unsupervised.
  config.fine.loss.depth = 0.0
  config.fine.loss.normal = 0.0
  # FineNet's albedo estimate against the true albedo (mean absolute RGB
  # difference); > 0 gives FineNet its albedo output.
  config.fine.loss.albedo = 0.0
  config.fine.data = ml_collections.ConfigDict()
  # 'synthetic' (rendered faces; their labels evaluate FineNet and, with
  # fine.loss.depth or .normal, supervise it), 'tfds'
  # (images of fine.data.name, e.g. facerecon_faces/vggface) or 'folder'
  # (fine.data.folder: any folder of face photos; every 10th is validation).
  config.fine.data.source = "synthetic"
  config.fine.data.name = "facerecon_faces/vggface"
  config.fine.data.data_dir = placeholder(str)
  config.fine.data.folder = placeholder(str)
  config.fine.data.num_workers = 0

  # --mode=preview: a picture of the model and a few sampled faces.
  config.preview = ml_collections.ConfigDict()
  config.preview.seed = 0
  config.preview.num_identities = 4    # random shape + texture, frontal
  config.preview.num_expressions = 4   # random expressions on the mean face
  config.preview.tile_size = 200       # pixels per face in the picture
  return config
