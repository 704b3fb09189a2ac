"""The embedded default: built-in face model, synthetic faces rendered on
the fly, small networks; trains CoarseNet and then FineNet on 2 CPU cores
in about 1 h 20 min (CoarseNet about 4 minutes).

    python main.py --config=configs/synthetic.py --workdir=runs/quickstart
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model = "embedded"
  config.image_size = 64

  # Poses within +-45 degrees of yaw and +-30 of pitch (the prior's default
  # is the original's +-90 and -75..45): in a few minutes a small network
  # learns shape and expression from these, not yet from profiles.
  config.synthetic.prior.yaw = (-45.0, 45.0)
  config.synthetic.prior.pitch = (-30.0, 30.0)

  coarse = config.coarse
  # One iteration (configs/resnet.py has the paper's 4): on 2 cores, twice
  # the steps teach more than a second iteration does.
  coarse.num_iterations = 1
  coarse.backbone = "small"
  coarse.backbone_kwargs.widths = (16, 32, 64, 128)
  coarse.backbone_kwargs.pool = "flatten"
  coarse.batch_size = 32
  coarse.num_train_steps = 4000
  coarse.learning_rate = 2e-3
  coarse.warmup_steps = 100
  coarse.loss.vertex = 10.0
  coarse.loss.shape = 0.1
  coarse.loss.expression = 0.1
  coarse.log_every = 50
  coarse.eval_every = 1000
  coarse.checkpoint_every = 1000

  # Then a FineNet stage on the same synthetic faces, narrower than the
  # paper's for the CPU, learning their true detail (the supervised terms):
  # it gains more than the paper's shape-from-shading loss does. Most of
  # what it corrects is the coarse fit's shape, which takes many images:
  # the figures of each step count tried are in docs/training.md.
  fine = config.fine
  fine.loss.sfs = 0.0
  fine.loss.fidelity = 0.0
  fine.loss.smoothness = 0.0
  fine.loss.depth = 1.0
  fine.loss.normal = 100.0
  fine.num_train_steps = 24000
  fine.widths = (16, 32, 64)
  fine.head = (32, 32, 16)
  fine.batch_size = 16
  fine.learning_rate = 3e-3
  fine.warmup_steps = 50
  fine.log_every = 250
  # Each evaluation and checkpoint costs about 9 s.
  fine.eval_every = 2000
  fine.checkpoint_every = 2000
  fine.eval_batch_size = 32
  fine.best_metric = "normal_error"
  return config
