"""Data sets of the Exemplar VAE paper as flattened float32 tensors in [0, 1].

`load_dataset(name, root, seed=..., **options)` returns a `DataSplits`; `DATASET_NAMES`
lists the names. "mnist-5k" (5,000 real MNIST digits, CC BY-SA 3.0) ships with the package
and needs no download. See `registry` for each set's root and options, and `splits` for the
binarisation convention.
"""
from .registry import CLASS_NAMES, DATASET_NAMES, load_dataset
from .splits import DataSplits

__all__ = ["CLASS_NAMES", "DATASET_NAMES", "DataSplits", "load_dataset"]
