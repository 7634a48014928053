"""Benchmark convzoo against plain PyTorch, timm and Keras: the same as `convzoo bench`, runnable as a script.

Examples:
    KERAS_BACKEND=torch python benchmarks/bench.py xception inception_v3 resnext50_32x4d --batch-size 8
    python benchmarks/bench.py xception_cifar_tiny --batch-size 64 --mode train --runtime eager,channels_last --against plain
    python benchmarks/bench.py xception --device cuda --runtime eager,channels_last,compile --precision fp32,bf16 --against plain,timm
"""

import sys

from convzoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
