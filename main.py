r"""facerecon's entry point: `python main.py --mode=... ` (see
`facerecon/cli.py` for the modes and flags, or `python main.py --help`).

    python main.py --config=configs/synthetic.py --workdir=runs/quickstart
    python main.py --mode=reconstruct --input=photos/ --output=out/

The same is installed as the `facerecon` command (`facerecon reconstruct
photos/ -o out/`).
"""

from facerecon import cli

if __name__ == "__main__":
  cli.run()
