"""The embedded default: built-in face model, synthetic faces rendered on
the fly, a small backbone; trains on 2 CPU cores in under 10 minutes.

    python main.py --mode=train --config=configs/synthetic.py --workdir=runs/quickstart
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model = "embedded"
  config.image_size = 64
  config.num_iterations = 2
  config.backbone = "small"
  config.backbone_kwargs.widths = (16, 32, 64, 128)
  config.backbone_kwargs.pool = "flatten"

  config.batch_size = 32
  config.num_train_steps = 1500
  config.learning_rate = 1e-3
  config.warmup_steps = 100

  config.loss.vertex = 10.0
  config.loss.shape = 0.1
  config.loss.expression = 0.1

  config.log_every = 50
  config.eval_every = 500
  config.checkpoint_every = 500
  return config
