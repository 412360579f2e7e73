"""Train a model from a YAML config: `python train.py CONFIG.yaml [key=value ...]`.

Works under `accelerate launch train.py CONFIG.yaml ...` for several processes or machines.
"""

import sys

from minilm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
