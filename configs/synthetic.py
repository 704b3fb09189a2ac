"""The embedded default: built-in face model, synthetic faces, 2 CPU cores.

    python main.py --config=configs/synthetic.py --workdir=runs/quickstart
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model = "embedded"
  return config
