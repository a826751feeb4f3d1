"""CelebA: aligned face images, centre-cropped, resized to 64x64 RGB, 8-bit or 5-bit.

`root` is a folder holding `img_align_celeba/` (or the .jpg/.jpeg/.png images directly)
and optionally `list_eval_partition.txt` (lines "000001.jpg 0"; 0 train, 1 val, 2 test;
every listed file must exist and every image must be listed). Without that file the n
images, sorted by file name, are split deterministically 80/10/10: with k = max(1, n // 10),
the first n - 2k are train, the next k validation, the last k test.

Preprocessing: the standard 148x148 centre crop for 178x218 (width x height) CelebA
images, the largest centred square for any other size; then a 64x64 resize with PIL's
BOX filter (an exact area average: no ringing, no overshoot when downscaling). 5-bit
data keeps the top 5 bits, value // 8, and scales by 1/31 (32 levels in [0, 1]); 8-bit
data is value/255. Images are flattened channel-major ([3, 64, 64] -> 12,288).
Memory: the full set (202,599 images) as float32 needs about 10 GB; `limit` reads only
the first n files of each split.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .splits import DataSplits
from .validate import check_count, require_dir

NAME = "celeba"
SIZE = 64
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PARTITION_FILE = "list_eval_partition.txt"
SPLITS = ("train", "val", "test")
_CELEBA_SIZE, _CELEBA_CROP = (178, 218), 148
_EXPECTED = "img_align_celeba/*.jpg (or the images directly), optionally " + PARTITION_FILE


def crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixel box of the centred square crop for an image size."""
    side = _CELEBA_CROP if (width, height) == _CELEBA_SIZE else min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def read_image(path: Path, num_bits: int) -> np.ndarray:
    """One image as uint8 [3, 64, 64] quantised to `num_bits` levels (0..2**num_bits - 1)."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")  # forces a full decode, so truncated files fail here
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{NAME}: cannot read image {str(path)!r}: {err}") from err
    square = rgb.crop(crop_box(*rgb.size)).resize((SIZE, SIZE), Image.Resampling.BOX)
    pixels = np.asarray(square, dtype=np.uint8).transpose(2, 0, 1)
    return pixels >> (8 - num_bits)


def _image_folder(root: Path) -> tuple[Path, list[str]]:
    folder = root / "img_align_celeba" if (root / "img_align_celeba").is_dir() else root
    names = sorted(p.name for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not names:
        raise ValueError(f"{NAME}: no {'/'.join(IMAGE_SUFFIXES)} images in {str(folder)!r}; "
                         f"root must hold {_EXPECTED}")
    return folder, names


def _partition_from_file(path: Path, names: list[str]) -> dict[str, list[str]]:
    parts: dict[str, list[str]] = {split: [] for split in SPLITS}
    listed: set[str] = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{NAME}: {str(path)!r} line {number} is {line!r}; expected "
                             f"'<file name> <0|1|2>'")
        if fields[0] in listed:  # it would be in two splits, or twice in one
            raise ValueError(f"{NAME}: {str(path)!r} line {number} lists {fields[0]} again")
        parts[SPLITS[int(fields[1])]].append(fields[0])
        listed.add(fields[0])
    missing = sorted(listed.difference(names))
    if missing:
        raise FileNotFoundError(f"{NAME}: {len(missing)} image(s) listed in {str(path)!r} are "
                                f"missing from the image folder, e.g. {missing[:3]}")
    unlisted = sorted(set(names).difference(listed))
    if unlisted:
        raise ValueError(f"{NAME}: {len(unlisted)} image(s) are not listed in {str(path)!r}, "
                         f"e.g. {unlisted[:3]}")
    return parts


def _partition_by_name(names: list[str]) -> dict[str, list[str]]:
    if len(names) < 3:
        raise ValueError(f"{NAME}: {len(names)} image(s) found; the 80/10/10 split without "
                         f"{PARTITION_FILE} needs at least 3")
    n_held = max(1, len(names) // 10)
    n_train = len(names) - 2 * n_held
    return {"train": names[:n_train], "val": names[n_train:n_train + n_held],
            "test": names[n_train + n_held:]}


def _read_split(folder: Path, names: list[str], num_bits: int) -> torch.Tensor:
    """float32 [len(names), 12288] in [0, 1]; decodes in threads (PIL releases the GIL)."""
    pixels = np.empty((len(names), 3, SIZE, SIZE), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, image in enumerate(pool.map(lambda n: read_image(folder / n, num_bits), names)):
            pixels[i] = image
    flat = torch.from_numpy(pixels).reshape(len(names), -1)
    return flat.to(torch.float32).div_(2 ** num_bits - 1)


def load_celeba(root: str | os.PathLike, *, num_bits: int = 8,
                limit: int | None = None) -> DataSplits:
    """CelebA as DataSplits: [N, 12288] float32 splits, input_shape (3, 64, 64), logistic.

    Deterministic: neither the split nor the preprocessing is random.
    """
    if type(num_bits) is not int or num_bits not in (5, 8):
        raise ValueError(f"num_bits must be 8 or 5 for {NAME}, got {num_bits!r}")
    if limit is not None:
        check_count(limit, "limit")
    folder, names = _image_folder(require_dir(root, NAME, _EXPECTED))
    partition_path = Path(root) / PARTITION_FILE
    parts = (_partition_from_file(partition_path, names) if partition_path.is_file()
             else _partition_by_name(names))
    for split in SPLITS:
        if not parts[split]:
            raise ValueError(f"{NAME}: the {split} split is empty in {str(partition_path)!r}")
    splits = {split: _read_split(folder, parts[split][:limit], num_bits) for split in SPLITS}
    return DataSplits(
        name=NAME,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        input_shape=(3, SIZE, SIZE),
        likelihood="logistic",
        dynamic_binarization=False,
        num_bits=num_bits,
        train_labels=None,
        val_labels=None,
        test_labels=None,
    )
