"""Data: insightface RecordIO written here and read back in pure Python (also a record split at an
embedded magic number), image folders, verification .bin files, clear errors for corrupt
records, bad offsets and empty identity folders; the generated identities and the two loaders."""
import io
import pickle
import struct

import pytest
import torch
from PIL import Image

from f2c.data import (MAGIC, DataError, FolderFaces, RecordFaces, RecordIO, SynthFaces,
                      f2c_indices, instance_indices, load_bin, synth_pairs, write_bin,
                      write_recordio)


def images(n, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)


def encode(img, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format=fmt)
    return buf.getvalue()


def png(img):
    return encode(img)


def test_recordio_round_trip_with_meta_header(tmp_path):
    imgs = images(5)
    labels = [0, 0, 1, 2, 2]
    write_recordio(tmp_path / "train", [(l, png(i)) for l, i in zip(labels, imgs)])
    faces = RecordFaces(tmp_path, 16)
    assert len(faces) == 5 and faces.num_classes == 3
    assert faces.labels.tolist() == labels
    x = faces.load(torch.tensor([3, 0]))
    torch.testing.assert_close(x[0], (imgs[3].float() - 127.5) / 128)    # PNG: lossless
    torch.testing.assert_close(x[1], (imgs[0].float() - 127.5) / 128)
    assert faces.image_count(torch.tensor([2, 0, 1])).tolist() == [2, 2, 1]
    assert faces.image_index(torch.tensor([2, 1]), torch.tensor([1, 0])).tolist() == [4, 2]


def test_recordio_label_arrays_jpeg_and_resizing(tmp_path):
    img = images(1, 24)[0]
    jpg = encode(img, "JPEG")
    write_recordio(tmp_path / "train", [([4.0, 1.0], jpg), (7, jpg)], meta=False)
    faces = RecordFaces(tmp_path, 16)                   # no header record: keys as listed
    assert faces.labels.tolist() == [4, 7] and faces.num_classes == 8
    assert faces.load(torch.tensor([0])).shape == (1, 3, 16, 16)


def test_a_payload_holding_the_magic_number_is_split_and_joined(tmp_path):
    payload = struct.pack("<IfQQ", 0, 3.0, 1, 0) + struct.pack("<I", MAGIC) * 2 + b"tail!"
    rec, idx = tmp_path / "x.rec", tmp_path / "x.idx"
    from f2c.data import _frame
    framed = _frame(payload)
    assert struct.unpack_from("<II", framed)[1] >> 29 == 1              # first of several parts
    rec.write_bytes(framed)
    idx.write_text("0\t0\n")
    io = RecordIO(rec, idx)
    assert io.read(0) == payload
    label, rest = RecordIO.unpack(io.read(0))
    assert label == 3.0 and rest.endswith(b"tail!")


def test_corrupt_records_and_offsets_are_named(tmp_path):
    write_recordio(tmp_path / "train", [(0, png(images(1)[0])), (1, png(images(1)[0]))])
    idx = tmp_path / "train.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines[:2] + [lines[2].split("\t")[0] + "\t5"]) + "\n")
    with pytest.raises(DataError, match=r"no record at offset 5 \(key 2\).*magic"):
        RecordFaces(tmp_path, 16)
    idx.write_text("\n".join(lines[:2] + [lines[2].split("\t")[0] + "\t999999"]) + "\n")
    with pytest.raises(DataError, match="runs past the end"):
        RecordFaces(tmp_path, 16)
    idx.write_text("0\t0\nbroken line\n")
    with pytest.raises(DataError, match="line 2 is 'broken line'"):
        RecordFaces(tmp_path, 16)
    # a record whose image bytes are not an image
    write_recordio(tmp_path / "train", [(0, b"not an image at all")])
    with pytest.raises(DataError, match="record 1: cannot decode"):
        RecordFaces(tmp_path, 16).load(torch.tensor([0]))
    (tmp_path / "train.rec").unlink()
    with pytest.raises(DataError, match="train.rec does not exist"):
        RecordFaces(tmp_path, 16)


def test_image_folders_and_an_empty_identity(tmp_path):
    imgs = images(3)
    for name, i in (("bob", [0, 1]), ("alice", [2])):
        (tmp_path / name).mkdir()
        for j in i:
            (tmp_path / name / f"{j}.png").write_bytes(png(imgs[j]))
    faces = FolderFaces(tmp_path, 16)
    assert faces.identities == ["alice", "bob"] and faces.labels.tolist() == [0, 1, 1]
    torch.testing.assert_close(faces.load(torch.tensor([0]))[0], (imgs[2].float() - 127.5) / 128)
    (tmp_path / "carol").mkdir()
    (tmp_path / "carol" / "notes.txt").write_text("no faces here")
    with pytest.raises(DataError, match="identity folder .*carol has no images"):
        FolderFaces(tmp_path, 16)


def test_verification_bin_round_trip_and_bad_files(tmp_path):
    imgs = images(4)
    path = write_bin(tmp_path / "lfw.bin", [png(i) for i in imgs], [True, False])
    with open(path, "rb") as f:                            # insightface's own reader
        bins, issame = pickle.load(f, encoding="bytes")
    assert len(bins) == 4 and issame == [True, False]
    pairs = load_bin(path, 16)
    assert pairs.name == "lfw" and torch.equal(pairs.images, imgs)
    assert pairs.pairs.tolist() == [[0, 1], [2, 3]] and pairs.issame.tolist() == [True, False]
    (tmp_path / "bad.bin").write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.bin is not an insightface verification .bin"):
        load_bin(tmp_path / "bad.bin", 16)
    with open(tmp_path / "odd.bin", "wb") as f:
        pickle.dump(([png(imgs[0])] * 3, [True, False]), f)
    with pytest.raises(DataError, match="3 images for 2 pairs"):
        load_bin(tmp_path / "odd.bin", 16)


def test_generated_identities_are_deterministic_and_scale():
    a = SynthFaces(50, 4, 32, seed=1)
    b = SynthFaces(10 ** 7, 4, 32, seed=1)                  # nothing stored per identity
    idx = torch.tensor([0, 5, 199])
    x = a.load_uint8(idx)
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 32, 32)
    assert torch.equal(x, b.load_uint8(idx)) and torch.equal(x, a.load_uint8(idx))
    assert not torch.equal(x, SynthFaces(50, 4, 32, seed=2).load_uint8(idx))
    assert b.load(torch.tensor([4 * 10 ** 7 - 1])).shape == (1, 3, 32, 32)
    # identity structure: images of one identity are closer than images of different ones
    imgs = SynthFaces(40, 4, 32, seed=0, nuisance=0.3).load(torch.arange(160)).flatten(1)
    d = torch.cdist(imgs, imgs)
    same = torch.arange(160)[:, None] // 4 == torch.arange(160)[None] // 4
    off = ~torch.eye(160, dtype=torch.bool)
    assert d[same & off].mean() < 0.9 * d[~same].mean()


def test_generated_pairs_are_balanced_and_from_held_out_identities():
    pairs = synth_pairs(20, 3, 40, 32, seed=0)
    assert pairs.images.shape == (60, 3, 32, 32) and len(pairs.pairs) == 40
    lab = pairs.labels
    same = lab[pairs.pairs[:, 0]] == lab[pairs.pairs[:, 1]]
    assert torch.equal(same, pairs.issame) and pairs.issame.tolist()[:4] == [True, False] * 2
    assert (pairs.pairs[:, 0] != pairs.pairs[:, 1]).all()
    train = SynthFaces(20, 3, 32, seed=0).load_uint8(torch.arange(3))
    assert not torch.equal(train, pairs.images[:3])              # another split


def test_loaders_cover_their_shares_and_resume_at_any_step():
    faces = SynthFaces(30, 3, 16, seed=0)
    runs = [list(zip(range(6), f2c_indices(faces, 4, 8, 0, r, 2, 0))) for r in range(2)]
    for r in range(2):
        for _, (step, x, y) in runs[r]:
            assert len(x) == len(y) == 2 + 2
            ids_x, ids_y = faces.label_of(x[:2]), faces.label_of(y[:2])
            assert torch.equal(ids_x, ids_y) and (x[:2] != y[:2]).all()   # pairs of one identity
    ids = torch.cat([faces.label_of(runs[r][0][1][1][:2]) for r in range(2)])
    assert len(set(ids.tolist())) == 4                              # ranks draw different ids
    later = list(zip(range(2), f2c_indices(faces, 4, 8, 0, 1, 2, 4)))
    for (_, (s, x, y)), (_, (s2, x2, y2)) in zip(runs[1][4:], later):
        assert s == s2 and torch.equal(x, x2) and torch.equal(y, y2)
    one = [i for _, (_, i) in zip(range(10), instance_indices(faces, 9, 0, 0, 1, 0))]
    assert sorted(torch.cat(one[:10]).tolist()) == sorted(list(range(90)))   # an epoch


def test_an_identity_with_one_image_pairs_it_with_itself():
    from f2c.data import pick_pairs

    class One:
        def image_count(self, ids):
            return torch.tensor([1, 2])[ids]

        def image_index(self, ids, k):
            return torch.tensor([0, 1])[ids] + k

    a, b = pick_pairs(One(), torch.tensor([0, 1, 0]), torch.Generator().manual_seed(0))
    assert a[0] == b[0] == 0 and a[2] == b[2] == 0
    assert {a[1].item(), b[1].item()} == {1, 2}
