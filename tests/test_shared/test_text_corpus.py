"""Token corpora: the default standard-library corpus and the real-data layouts."""
import numpy as np
import pytest
import torch

from shared.data import CorpusError, load_corpus


def test_default_corpus_is_deterministic_python_source():
    a, b = load_corpus(max_bytes=200_000), load_corpus(max_bytes=200_000)
    assert a.vocab_size == 256 and torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert a.train.numel() + a.val.numel() == 200_000
    assert b"def " in bytes(a.train[:50_000].tolist())
    x, y = a.lm_batch("train", torch.tensor([0, 17, 1000]), 33)
    assert x.shape == y.shape == (3, 33) and x.dtype == torch.int64
    assert torch.equal(x[1, 1:], y[1, :-1]) and int(x[1, 0]) == int(a.train[17])


def test_nanogpt_directory_and_single_bin(tmp_path):
    train = np.arange(1000, dtype=np.uint16) % 5000
    val = (np.arange(300, dtype=np.uint16) * 7) % 5000
    train.tofile(tmp_path / "train.bin")
    val.tofile(tmp_path / "val.bin")
    c = load_corpus(tmp_path)
    assert c.train.numel() == 1000 and c.val.numel() == 300 and c.vocab_size == 2094
    single = load_corpus(tmp_path / "train.bin", val_fraction=0.25)
    assert single.train.numel() == 750 and torch.equal(single.val, torch.arange(750, 1000, dtype=torch.int32))


def test_text_directory(tmp_path):
    (tmp_path / "b.txt").write_text("second file " * 10)
    (tmp_path / "a.md").write_text("first file " * 10)
    (tmp_path / "skip.png").write_bytes(b"\x89PNG")
    c = load_corpus(tmp_path)
    text = bytes(torch.cat([c.train, c.val]).tolist())
    assert text.startswith(b"first file") and b"second file" in text and b"PNG" not in text


def _missing(p):
    return p / "nothing"


def _odd_bin(p):
    (p / "odd.bin").write_bytes(b"\x01\x02\x03")
    return p / "odd.bin"


def _train_without_val(p):
    (p / "t").mkdir()
    (p / "t" / "train.bin").write_bytes(b"\x00\x01")
    return p / "t"


def _empty_dir(p):
    (p / "e").mkdir()
    return p / "e"


@pytest.mark.parametrize("make,message", [
    (_missing, "no corpus at"), (_odd_bin, "empty or odd"), (_train_without_val, "no val.bin"),
    (_empty_dir, "no text files"),
])
def test_bad_paths_give_one_clear_error(tmp_path, make, message):
    with pytest.raises(CorpusError, match=message):
        load_corpus(make(tmp_path))
