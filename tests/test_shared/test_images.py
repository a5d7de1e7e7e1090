"""The shared image readers: the generated default is deterministic, balanced and shares its
class patterns across splits; CIFAR-10 batches and ImageNet folders are read, and bad ones named."""
import pickle

import numpy as np
import pytest
import torch

from shared.data.images import (crop_batch, generated_images, image_folders, image_source,
                                read_cifar_batches)
from shared.errors import DataError


def test_generated_is_deterministic_and_balanced():
    a, la = generated_images(300, 10, 16, seed=3, split_seed=1)
    b, lb = generated_images(300, 10, 16, seed=3, split_seed=1)
    c, _ = generated_images(300, 10, 16, seed=3, split_seed=2)
    assert a.dtype == torch.uint8 and a.shape == (300, 3, 16, 16)
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert torch.bincount(la, minlength=10).min() > 10
    assert generated_images(8, 10, 32, shift=6, grid=5)[0].shape == (8, 3, 32, 32)
    with pytest.raises(DataError, match="needs n >= 1"):
        generated_images(0)


def test_crop_batch_equals_slicing():
    x = torch.randn(3, 2, 9, 9)
    dy, dx = torch.tensor([0, 2, 4]), torch.tensor([4, 0, 1])
    out = crop_batch(x, dy, dx, 5)
    for i in range(3):
        assert torch.equal(out[i], x[i, :, dy[i]:dy[i] + 5, dx[i]:dx[i] + 5])


def test_cifar_batches_and_their_errors(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        data = np.full((2, 3072), i, dtype=np.uint8)
        with open(root / name, "wb") as f:
            pickle.dump({"data": data, "labels": [i % 10, 1]}, f)
    x, y = read_cifar_batches(tmp_path, names[:2])
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 1, 1] and int(x[2, 0, 0, 0]) == 1
    assert image_source("auto", str(tmp_path), 32) == "cifar10"
    with pytest.raises(DataError, match="--img_size 32"):
        image_source("auto", str(tmp_path), 16)
    (root / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch is not a CIFAR-10 python batch"):
        read_cifar_batches(tmp_path, ["test_batch"])


def test_image_folders_name_what_is_wrong(tmp_path):
    from PIL import Image

    assert image_source("auto", "", 16) == "generated"
    with pytest.raises(DataError, match="needs --data PATH"):
        image_source("imagenet", "", 224)
    with pytest.raises(DataError, match="does not exist"):
        image_source("auto", str(tmp_path / "nothing"), 224)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / split / cls / "x.png")
    (tmp_path / "train" / "a" / "bad.png").write_bytes(b"\x89PNG broken")
    train, val = image_folders(tmp_path, lambda im: im.size, lambda im: im.size)
    assert train.classes == ["a", "b"] and len(val) == 2
    with pytest.raises(DataError, match="cannot read image .*bad.png"):
        [train[i] for i in range(len(train))]
    skipping, _ = image_folders(tmp_path, lambda im: im.size, lambda im: im.size, skip_bad=True)
    assert [skipping[i][0] for i in range(len(skipping))] == [(8, 8)] * 3
    assert int(skipping.skipped) == 1
