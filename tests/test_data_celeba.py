"""CelebA reader on small folders of JPG/PNG images of several sizes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exvae_fast.data import load_dataset
from exvae_fast.data.celeba import crop_box

RED, BLUE = (255, 0, 0), (0, 0, 255)


def framed(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    """A red image whose `box` region is blue: a correct crop keeps only blue."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:] = RED
    left, top, right, bottom = box
    pixels[top:bottom, left:right] = BLUE
    return Image.fromarray(pixels)


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def make_folder(root: Path, count: int, subfolder: bool = True) -> Path:
    folder = root / "img_align_celeba" if subfolder else root
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(178, 218), (50, 40), (64, 64), (30, 90)]
    for i in range(count):
        colour = (10 * i % 256, 255 - 10 * i % 256, 77)
        suffix = ".png" if i % 2 else ".jpg"
        solid(colour, sizes[i % len(sizes)]).save(folder / f"{i + 1:06d}{suffix}")
    return folder


def test_crop_box():
    assert crop_box(178, 218) == (15, 35, 163, 183)  # the standard 148x148 centre crop
    assert crop_box(100, 60) == (20, 0, 80, 60)
    assert crop_box(60, 101) == (0, 20, 60, 80)
    assert crop_box(64, 64) == (0, 0, 64, 64)


@pytest.mark.parametrize("size", [(178, 218), (100, 60), (33, 71)])
def test_centre_crop_removes_the_border(tmp_path, size):
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    for i in range(3):
        framed(*size, crop_box(*size)).save(folder / f"{i}.png")
    data = load_dataset("celeba", tmp_path)
    images = torch.cat([data.train, data.val, data.test]).view(-1, 3, 64, 64)
    assert torch.equal(images[:, 0], torch.zeros(3, 64, 64))  # no red left
    assert torch.equal(images[:, 2], torch.ones(3, 64, 64))


def test_channel_major_layout_and_8_bit_values(tmp_path):
    for i in range(3):
        solid((255, 0, 128)).save(tmp_path / f"{i}.png")
    data = load_dataset("celeba", tmp_path)
    assert data.input_shape == (3, 64, 64)
    assert (data.likelihood, data.dynamic_binarization, data.num_bits) == ("logistic", False, 8)
    image = data.train[0].view(3, 64, 64)
    assert torch.equal(image[0], torch.ones(64, 64))
    assert torch.equal(image[1], torch.zeros(64, 64))
    assert torch.allclose(image[2], torch.full((64, 64), 128 / 255))


def test_5_bit_values_are_multiples_of_one_31st(tmp_path):
    make_folder(tmp_path, 10)
    solid((200, 7, 255)).save(tmp_path / "img_align_celeba" / "000000.png")  # sorts first
    data = load_dataset("celeba", tmp_path, num_bits=5)
    assert data.num_bits == 5
    for split in (data.train, data.val, data.test):
        levels = split * 31
        assert torch.allclose(levels, levels.round(), atol=1e-4)
        assert split.min() >= 0 and split.max() <= 1
    first = data.train[0].view(3, 64, 64)
    expected = torch.tensor([200 // 8, 7 // 8, 255 // 8]) / 31
    assert torch.allclose(first[:, 10, 10], expected)


def test_split_by_sorted_name_without_partition_file(tmp_path):
    make_folder(tmp_path, 20)
    data = load_dataset("celeba", tmp_path)
    assert (data.train.shape[0], data.val.shape[0], data.test.shape[0]) == (16, 2, 2)
    assert data.train.shape[1] == 3 * 64 * 64 and data.train.dtype == torch.float32
    assert data.train_labels is None and data.test_labels is None
    again = load_dataset("celeba", tmp_path)
    assert torch.equal(data.train, again.train) and torch.equal(data.test, again.test)
    # The last file by name (000020, a PNG of a solid colour) is the last test image.
    colour = torch.tensor([190, 255 - 190, 77]) / 255
    assert torch.allclose(data.test[-1].view(3, 64, 64)[:, 5, 5], colour)


def test_small_folder_split_keeps_every_split_non_empty(tmp_path):
    make_folder(tmp_path, 3, subfolder=False)
    data = load_dataset("celeba", tmp_path)
    assert (data.train.shape[0], data.val.shape[0], data.test.shape[0]) == (1, 1, 1)


def test_partition_file_and_limit(tmp_path):
    folder = make_folder(tmp_path, 8)
    names = sorted(p.name for p in folder.iterdir())
    assignment = [0, 2, 1, 0, 0, 2, 1, 0]
    (tmp_path / "list_eval_partition.txt").write_text(
        "".join(f"{n} {s}\n" for n, s in zip(names, assignment)) + "\n")
    data = load_dataset("celeba", tmp_path)
    assert (data.train.shape[0], data.val.shape[0], data.test.shape[0]) == (4, 2, 2)
    colour = torch.tensor([10, 245, 77]) / 255  # image 2 (index 1) is the first test image
    assert torch.allclose(data.test[0].view(3, 64, 64)[:, 5, 5], colour)
    limited = load_dataset("celeba", tmp_path, limit=1)
    assert (limited.train.shape[0], limited.val.shape[0], limited.test.shape[0]) == (1, 1, 1)
    assert torch.equal(limited.test[0], data.test[0])


def test_partition_file_errors(tmp_path):
    folder = make_folder(tmp_path, 4)
    names = sorted(p.name for p in folder.iterdir())
    partition = tmp_path / "list_eval_partition.txt"
    partition.write_text(f"{names[0]} 0\n{names[1]} 3\n")
    with pytest.raises(ValueError, match=r"line 2 is .*; expected '<file name> <0\|1\|2>'"):
        load_dataset("celeba", tmp_path)
    partition.write_text("".join(f"{n} 0\n" for n in names) + "999999.jpg 1\n")
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) listed in .* are missing.*999999.jpg"):
        load_dataset("celeba", tmp_path)
    partition.write_text("".join(f"{n} {i % 3}\n" for i, n in enumerate(names[:3])))
    with pytest.raises(ValueError, match=r"1 image\(s\) are not listed in .*000004"):
        load_dataset("celeba", tmp_path)
    partition.write_text("".join(f"{n} 0\n" for n in names))
    with pytest.raises(ValueError, match="the val split is empty"):
        load_dataset("celeba", tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    (tmp_path / "img_align_celeba" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"no .jpg/.jpeg/.png images in .*img_align_celeba"):
        load_dataset("celeba", tmp_path)


def test_too_few_images_without_partition(tmp_path):
    make_folder(tmp_path, 2)
    with pytest.raises(ValueError, match="2 image.*needs at least 3"):
        load_dataset("celeba", tmp_path)


@pytest.mark.parametrize("content", [b"not a jpeg", None])
def test_unreadable_image(tmp_path, content):
    folder = make_folder(tmp_path, 5)
    if content is None:  # a real JPEG cut short
        full = (folder / "000001.jpg").read_bytes()
        content = full[: len(full) // 2]
    (folder / "000003.jpg").write_bytes(content)
    with pytest.raises(ValueError, match=r"cannot read image .*000003\.jpg"):
        load_dataset("celeba", tmp_path)


def test_missing_root_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"celeba: root folder .*absent.* not found; "
                                                r"expected a folder holding img_align_celeba"):
        load_dataset("celeba", tmp_path / "absent")


@pytest.mark.parametrize("options, message", [
    ({"num_bits": 6}, "num_bits must be 8 or 5 for celeba, got 6"),
    ({"num_bits": 5.0}, "num_bits must be 8 or 5 for celeba, got 5.0"),
    ({"limit": 0}, "limit must be an integer >= 1, got 0"),
])
def test_bad_options(tmp_path, options, message):
    make_folder(tmp_path, 3)
    with pytest.raises(ValueError, match=message):
        load_dataset("celeba", tmp_path, **options)


def test_an_image_listed_twice_is_refused(tmp_path):
    folder = make_folder(tmp_path, 4)
    names = sorted(p.name for p in folder.iterdir())
    lines = [f"{names[0]} 0", f"{names[1]} 0", f"{names[2]} 1", f"{names[3]} 2", f"{names[0]} 2"]
    (tmp_path / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"line 5 lists {names[0]} again"):
        load_dataset("celeba", tmp_path)
