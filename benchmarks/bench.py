"""Benchmark convzoo against timm and Keras: the same as `convzoo bench`, runnable as a script.

Example (the table in docs/PERFORMANCE.md):
    KERAS_BACKEND=torch python benchmarks/bench.py xception inception_v3 resnext50_32x4d --batch-size 8
"""

import sys

from convzoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
