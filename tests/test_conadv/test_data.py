"""Data: the generated set is deterministic and learnable-shaped, a step's augmented batch is a
function of (seed, step, position) only (so it is the same on 1 or 2 ranks and can be rebuilt),
CIFAR-10 pickles and ImageNet folders are read from a path, and bad paths give one clear error."""
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from conadv.config import Config
from conadv.data import DataError, augment_batch, build_data, policy_transform
from shared.data.images import generated_images


def test_a_steps_augmented_batch_depends_only_on_seed_step_and_position():
    images = generated_images(16, 10, 16, seed=0)[0]
    for policy in (None, policy_transform("autoaugment", "generated")):
        whole = augment_batch(images, seed=5, step=7, offset=0, global_batch=16, policy=policy)
        halves = torch.cat([augment_batch(images[:8], 5, 7, 0, 16, policy),
                            augment_batch(images[8:], 5, 7, 8, 16, policy)])
        assert torch.equal(whole, halves)                         # 1 rank == 2 ranks
        assert not torch.equal(whole, augment_batch(images, 5, 8, 0, 16, policy))
        assert whole.dtype == torch.uint8 and whole.shape == images.shape
    state = torch.get_rng_state()
    augment_batch(images, 5, 7, 0, 16, policy_transform("randaugment", "generated"))
    assert torch.equal(torch.get_rng_state(), state)             # the global RNG is untouched


def test_stream_shares_the_global_batch_and_rebuilds_any_step():
    cfg = Config(train_size=64, val_size=20, img_size=8, augment="autoaugment")
    data = build_data(cfg)
    one = data.stream(0, 16, 0, 1, "cpu")
    steps = [next(one) for _ in range(6)]                        # crosses an epoch (4 per epoch)
    again = next(data.stream(5, 16, 0, 1, "cpu"))
    assert torch.equal(again[0], steps[5][0]) and torch.equal(again[1], steps[5][1])
    ranks = [next(data.stream(5, 16, r, 2, "cpu")) for r in range(2)]
    assert torch.equal(torch.cat([r[0] for r in ranks]), steps[5][0])
    x = steps[0][0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    val = list(data.val_batches(16, 0, 1, "cpu"))
    assert [len(y) for _, y in val] == [16, 4]                   # every image, none dropped
    shares = [list(data.val_batches(4, r, 3, "cpu")) for r in range(3)]
    assert sum(len(y) for share in shares for _, y in share) == 20
    for r, share in enumerate(shares):                           # rank r: images r, r+3, ...
        assert torch.equal(share[0][0][1], data.val_images[r + 3].float() / 255)


def _write_cifar(root, n=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": list(rng.integers(0, 10, n))}, f)
    return root


def write_imagenet(root, classes=("n01", "n02"), per_class=3, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size, size + 3, 3), dtype=np.uint8)
                mode = "L" if i == 0 else "RGB"                   # a greyscale JPEG too
                img = Image.fromarray(arr[..., 0] if mode == "L" else arr, mode)
                img.save(root / split / c / f"{i}.JPEG")
    return root


def test_cifar10_and_imagenet_layouts_from_a_path(tmp_path):
    cifar = build_data(Config(data=str(_write_cifar(tmp_path / "c")), img_size=32))
    assert cifar.name == "cifar10" and cifar.train_size == 50 and cifar.val_size == 10
    x, y = next(cifar.stream(0, 10, 0, 1, "cpu"))
    assert x.shape == (10, 3, 32, 32) and y.dtype == torch.int64
    net = build_data(Config(data=str(write_imagenet(tmp_path / "i")), img_size=16))
    assert net.name == "imagenet" and net.num_classes == 2 and net.train_size == 6
    x, y = next(net.stream(0, 4, 0, 1, "cpu"))
    assert x.shape == (4, 3, 16, 16) and 0 <= x.min() and x.max() <= 1
    xv, _ = next(net.val_batches(6, 0, 1, "cpu"))
    assert xv.shape == (6, 3, 16, 16)


def test_bad_data_paths_name_the_problem(tmp_path):
    cfg = Config()
    with pytest.raises(DataError, match="does not exist"):
        build_data(replace(cfg, data=str(tmp_path / "nowhere")))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="cannot tell the dataset.*a.txt"):
        build_data(replace(cfg, data=str(tmp_path / "junk")))
    bad = _write_cifar(tmp_path / "bad")
    (bad / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch is not a CIFAR-10 python batch"):
        build_data(replace(cfg, data=str(bad), img_size=32))
    with pytest.raises(DataError, match="pass --img_size 32"):
        build_data(replace(cfg, data=str(_write_cifar(tmp_path / "c2"))))
