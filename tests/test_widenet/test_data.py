"""Data: CIFAR-10 pickles and ImageNet folders written here in the real layout, the generated
default, and clear errors for missing or malformed data."""
import dataclasses
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from widenet.config import PRESETS, Config
from widenet.data import CIFAR_TEST, CIFAR_TRAIN, DataError, build_datasets


def _cfg(**kw):
    return dataclasses.replace(Config(**PRESETS["tiny"]), randaug_ops=2, **kw)


def write_cifar(root, per_batch=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(CIFAR_TRAIN + CIFAR_TEST):
        batch = {"batch_label": name, "labels": [(i + j) % 10 for j in range(per_batch)],
                 "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "filenames": [f"{name}_{j}.png" for j in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


def test_cifar10_python_layout(tmp_path):
    folder = write_cifar(tmp_path)
    train, val, classes = build_datasets(_cfg(data=str(tmp_path)))
    assert classes == 10 and len(train) == 30 and len(val) == 6
    x, y = val[1]
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    expected = torch.from_numpy(raw["data"][1].reshape(3, 32, 32)).float() / 127.5 - 1
    torch.testing.assert_close(x, expected)          # channel planes kept in RGB order
    assert y == raw["labels"][1]
    xt, _ = train[0]
    assert xt.shape == (3, 32, 32) and xt.min() >= -1 and xt.max() <= 1


def test_cifar10_malformed_batch_is_named(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3 is not a CIFAR-10 python batch"):
        build_datasets(_cfg(data=str(tmp_path)))
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        build_datasets(_cfg(data=str(tmp_path), dataset="cifar10"))


def write_imagenet(root, per_class=(3, 2)):
    """ImageNet layout: root/{train,val}/<wnid>/<wnid>_<j>.JPEG, JPEGs of varied sizes."""
    rng = np.random.default_rng(1)
    for split, n in zip(("train", "val"), per_class):
        for wnid in ("n01440764", "n01443537"):
            d = root / split / wnid
            d.mkdir(parents=True)
            for j in range(n):
                arr = rng.integers(0, 256, (40 + j, 50, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{wnid}_{j}.JPEG", format="JPEG")


def test_imagenet_folder_layout(tmp_path):
    write_imagenet(tmp_path)
    cfg = _cfg(data=str(tmp_path), img_size=32)
    train, val, classes = build_datasets(cfg)
    assert classes == 2 and len(train) == 6 and len(val) == 4
    x, y = train[4]
    assert x.shape == (3, 32, 32) and y == 1 and -1 <= x.min() and x.max() <= 1
    xv, yv = val[0]
    assert xv.shape == (3, 32, 32) and yv == 0


def test_missing_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(_cfg(data=str(tmp_path / "nowhere")))
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match="cannot tell the dataset"):
        build_datasets(_cfg(data=str(tmp_path / "junk")))
    (tmp_path / "inet" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="val does not exist"):
        build_datasets(_cfg(data=str(tmp_path / "inet")))


