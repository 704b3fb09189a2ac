"""The embedded default: built-in face model, synthetic faces rendered on
the fly, small networks; trains CoarseNet and then FineNet on 2 CPU cores
in about 10 minutes.

    python main.py --mode=train --config=configs/synthetic.py --workdir=runs/quickstart
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model = "embedded"
  config.image_size = 64
  # One iteration (configs/resnet.py has the paper's 4): on 2 cores, twice
  # the steps teach more than a second iteration does.
  config.num_iterations = 1
  config.backbone = "small"
  config.backbone_kwargs.widths = (16, 32, 64, 128)
  config.backbone_kwargs.pool = "flatten"

  # Poses within +-45 degrees of yaw and +-30 of pitch (the prior's default
  # is the original's +-90 and -75..45): in a few minutes a small network
  # learns shape and expression from these, not yet from profiles.
  config.data.prior.yaw = (-45.0, 45.0)
  config.data.prior.pitch = (-30.0, 30.0)

  config.batch_size = 32
  config.num_train_steps = 4000
  config.learning_rate = 2e-3
  config.warmup_steps = 100

  config.loss.vertex = 10.0
  config.loss.shape = 0.1
  config.loss.expression = 0.1

  config.log_every = 50
  config.eval_every = 1000
  config.checkpoint_every = 1000

  # Then a short FineNet stage on the same synthetic faces (their labels are
  # used only to evaluate it), narrow for the CPU.
  config.fine.num_train_steps = 1000
  config.fine.widths = (8, 16, 32)
  config.fine.head = (16, 16, 8)
  config.fine.batch_size = 16
  config.fine.learning_rate = 3e-3
  config.fine.warmup_steps = 50
  config.fine.eval_every = 500
  config.fine.checkpoint_every = 500
  config.fine.eval_batch_size = 32
  config.fine.best_metric = "normal_error"
  return config
