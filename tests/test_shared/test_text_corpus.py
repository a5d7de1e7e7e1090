"""Token corpora: the default standard-library corpus, the real-data layouts, and bounded
memory (text streamed up to ``max_bytes``, ``.bin`` files memory-mapped)."""
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.data import CorpusError, load_corpus
from shared.data import text_corpus
from shared.errors import UsageError


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
    assert "memory-mapped" in c.source
    single = load_corpus(tmp_path / "train.bin", val_fraction=0.25)
    assert single.train.numel() == 750
    assert torch.equal(single.val.long(), torch.arange(750, 1000))
    x, y = single.lm_batch("val", torch.tensor([0, 100]), 9)
    assert x.dtype == torch.int64 and torch.equal(x[1], torch.arange(850, 859))
    assert torch.equal(y[1], torch.arange(851, 860))


def test_bin_tokens_stay_on_disk_and_the_file_is_never_written(tmp_path):
    """A .bin corpus is memory-mapped: loading it and drawing batches allocates far less than the
    file (the old loader held 3x the file in anonymous memory), and writing through the tensor
    (copy-on-write) leaves the file as it was."""
    n = 10_000_000  # 20 MB of uint16
    (np.arange(n, dtype=np.int64) % 50_000).astype(np.uint16).tofile(tmp_path / "big.bin")
    before = _anon_bytes()
    c = load_corpus(tmp_path / "big.bin", val_fraction=0.1)
    x, _ = c.lm_batch("train", torch.tensor([0, n // 2]), 64)
    grown = _anon_bytes() - before
    assert c.vocab_size == 50_000 and int(x[1, 0]) == (n // 2) % 50_000
    if before:  # Linux: anonymous memory is measurable
        assert grown < 4_000_000, f"loading a 20 MB .bin file took {grown} bytes of memory"
    c.train[0] = 7
    assert np.fromfile(tmp_path / "big.bin", dtype=np.uint16, count=1)[0] == 0


def _anon_bytes() -> int:
    """Resident anonymous memory of this process (0 where /proc is not available)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def test_text_directory(tmp_path):
    (tmp_path / "b.txt").write_text("second file " * 10)
    (tmp_path / "a.md").write_text("first file " * 10)
    (tmp_path / "skip.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    c = load_corpus(tmp_path)
    text = bytes(torch.cat([c.train, c.val]).tolist())
    assert text.startswith(b"first file") and b"second file" in text and b"PNG" not in text
    assert "2 text files" in c.source and "1 binary files skipped" in c.source


def test_extensionless_text_files_are_text_and_binary_ones_are_skipped(tmp_path):
    lic = tmp_path / "licenses"
    (lic / "sub").mkdir(parents=True)
    (lic / "LICENSE").write_text("Permission is hereby granted, free of charge ... \u00e9\u00e8\n" * 3)
    (lic / "sub" / "COPYING").write_text("GNU GENERAL PUBLIC LICENSE\n" * 3)
    (lic / "blob").write_bytes(bytes(range(256)))          # invalid UTF-8 and NULs
    (lic / "zeros.dat").write_bytes(b"abc\x00def" * 10)   # valid UTF-8 but with NULs
    (lic / ".git").mkdir()
    (lic / ".git" / "HEAD").write_text("ref: refs/heads/main\n")  # hidden: left out
    c = load_corpus(lic)
    text = bytes(torch.cat([c.train, c.val]).tolist()).decode()
    assert text.startswith("Permission") and "GNU GENERAL" in text and "refs/heads" not in text
    assert "2 text files" in c.source and "2 binary files skipped" in c.source
    one = load_corpus(lic / "LICENSE")
    assert one.vocab_size == 256 and "text file" in one.source


def test_cap_cuts_inside_a_multibyte_character_and_after_a_separator(tmp_path):
    (tmp_path / "a").write_text("\u00e9" * 20)  # 40 bytes of 2-byte characters
    (tmp_path / "b").write_text("b" * 40)
    c = load_corpus(tmp_path, max_bytes=33)     # cut inside an "é": still text
    assert c.train.numel() + c.val.numel() == 33
    c = load_corpus(tmp_path, max_bytes=41)     # the separator is the last byte
    blob = bytes(torch.cat([c.train, c.val]).tolist())
    assert len(blob) == 41 and blob.endswith(b"\n")
    c = load_corpus(tmp_path, max_bytes=45)
    assert bytes(torch.cat([c.train, c.val]).tolist()).endswith(b"\nbbbb")


class _CountingOpen:
    """Wraps ``open`` in the corpus module: counts the files opened and the bytes read."""

    def __init__(self):
        self.files, self.bytes = 0, 0

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        self.files += 1
        counter = self

        class Wrapped(io.RawIOBase):
            def read(self, n=-1):
                data = f.read(n)
                counter.bytes += len(data)
                return data

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

        return Wrapped()


def test_reading_1000_bytes_of_a_100_mb_corpus_reads_under_1_mb(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    line = b"All work and no play makes Jack a dull boy.\n" * 1000  # 44 kB
    for i in range(20):                                            # 20 files of 5 MB
        with open(corpus / f"part{i:02d}", "wb") as f:
            for _ in range(114):
                f.write(line)
    assert sum(p.stat().st_size for p in corpus.iterdir()) > 100_000_000
    counting = _CountingOpen()
    monkeypatch.setattr(text_corpus, "open", counting, raising=False)
    rchar = _rchar()
    c = load_corpus(corpus, max_bytes=1000)
    rchar = _rchar() - rchar
    assert c.train.numel() + c.val.numel() == 1000
    assert counting.bytes < 1_000_000 and counting.files == 1, (counting.bytes, counting.files)
    if rchar >= 0:  # Linux: every byte the process read through read(2), whoever asked for it
        assert rchar < 1_000_000, f"load_corpus read {rchar} bytes for a 1000-byte corpus"
    single = load_corpus(corpus / "part00", max_bytes=1000)
    assert single.train.numel() + single.val.numel() == 1000 and counting.bytes < 2_000_000


def _rchar() -> int:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -sys.maxsize


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


def _only_binary_dir(p):
    (p / "b").mkdir()
    (p / "b" / "image").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    return p / "b"


def _binary_file(p):
    (p / "weights.pt").write_bytes(b"PK\x03\x04\x00\x00\x08\x00" * 4)
    return p / "weights.pt"


def _short_text(p):
    (p / "short.txt").write_text("tiny")
    return p / "short.txt"


@pytest.mark.parametrize("make,message", [
    (_missing, "no corpus at .*nothing: expected .* found nothing"),
    (_odd_bin, "odd.bin should hold uint16 .* its size is 3 bytes"),
    (_train_without_val, "has train.bin but no val.bin"),
    (_empty_dir, "no text files: expected UTF-8 text .* found 0 files"),
    (_only_binary_dir, "found 1 files, all binary"),
    (_binary_file, "weights.pt is not a text file: expected UTF-8 text"),
    (_short_text, "short.txt has only 4 bytes"),
])
def test_bad_paths_give_one_clear_error(tmp_path, make, message):
    with pytest.raises(CorpusError, match=message) as info:
        load_corpus(make(tmp_path))
    assert isinstance(info.value, UsageError) and "\n" not in str(info.value)
