"""Face data: the real formats from a path, a generated identity dataset by default, and the
two loaders of F2C.

Real formats (``--data DIR``):

* **insightface RecordIO** (MS1MV2 ``faces_emore``, Glint360K, WebFace42M): ``DIR/train.rec`` +
  ``DIR/train.idx``, read in pure Python (no mxnet). A record is ``uint32 magic 0xCED7230A``,
  ``uint32 lrec`` (``cflag = lrec >> 29``, ``length = lrec & (2**29 - 1)``), the payload padded
  to 4 bytes; a payload whose bytes contained the magic number is split into parts (cflag 1 =
  first, 2 = middle, 3 = last) joined by the magic number. The payload is a 24-byte header
  ``<IfQQ`` (flag, label, id, id2), ``flag`` more float32 labels when flag > 0, then the JPEG.
  Record 0 may be a meta header: with flag > 0, ``label[0]`` is one past the last image record.
  ``.idx`` lines are ``key<TAB>offset``.
* **image folders**: ``DIR/<identity>/*.jpg|png`` (or ``DIR/train/<identity>/...``), identities
  numbered in sorted order.
* **verification pairs**: ``DIR/<name>.bin`` (lfw, cfp_fp, agedb_30, ...), insightface's pickle
  of ``(list of encoded images, list of issame)``, pair ``i`` = images ``2i`` and ``2i + 1``.

Images are decoded RGB with Pillow (the official F2C code decodes BGR with cv2; channel order
matters only for pretrained weights), resized to the model's input side when they differ, and
normalised as the official code: ``(x - 127.5) / 128``.

Generated default (:class:`SynthFaces`): identity ``i`` of split ``s`` is a procedural face (face
oval, skin and hair colour, hairline, eyes, brows, nose, mouth, moles, skin texture) whose ~30
shape and colour parameters are a hash of ``(seed, s, i)``; image ``j`` of it adds nuisance: pose
(shift, scale, in-plane rotation), expression (mouth, eyes), illumination (direction, strength,
brightness, contrast), background and pixel noise, hashed from ``(seed, s, i, j)``. Nothing is
stored: any number of identities costs no memory, and an image is the same every time it is
drawn. Training identities and verification identities are different splits.

Loaders (a global batch per step, each rank its share; positions are a function of the step, so
a resumed run draws the same batches):

* instance loader: images in a shuffled order, epoch after epoch (``EpochSampler``);
* identity loader (F2C): identities in a shuffled order, two random images of each (the same
  image twice when it has only one).

F2C's two views of a step are ``x = [id image A; first half of the instances]`` and
``y = [id image B; second half]``; the baselines take ``batch_size`` instances. Each image is
flipped horizontally with probability 0.5 (the official augmentation), drawn from a
``(seed, step, rank)`` stream.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from shared.data import EpochSampler
from shared.errors import UsageError

MAGIC = 0xCED7230A
_HEADER = struct.Struct("<IfQQ")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


class DataError(UsageError):
    """Missing or malformed face data (the message names the path and what was expected)."""


def normalize_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 255] float images -> ``(x - 127.5) / 128`` (official preprocessing)."""
    return (x.float() - 127.5) / 128.0


def _decode(buf: bytes, img_size: int, where: str) -> torch.Tensor:
    """Encoded image bytes -> uint8 RGB ``(3, img_size, img_size)`` (PIL; resized if needed)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(buf)) as im:
            im = im.convert("RGB")
            if im.size != (img_size, img_size):
                im = im.resize((img_size, img_size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{where}: cannot decode the image ({exc}); expected JPEG/PNG "
                        f"bytes") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


# ---- RecordIO --------------------------------------------------------------------------------

def pack_record(label, image: bytes, index: int = 0) -> bytes:
    """The payload of one insightface record (header + image bytes); ``label`` a number or a
    sequence of numbers (flag = its length)."""
    if isinstance(label, (int, float)):
        return _HEADER.pack(0, float(label), index, 0) + image
    label = [float(v) for v in label]
    return _HEADER.pack(len(label), 0.0, index, 0) + struct.pack(f"<{len(label)}f", *label) + image


def _frame(payload: bytes) -> bytes:
    """A payload framed as dmlc RecordIO: split at every 4-byte-aligned magic number."""
    magic = struct.pack("<I", MAGIC)
    parts, start = [], 0
    for pos in range(0, len(payload) - 3, 4):
        if payload[pos:pos + 4] == magic:
            parts.append(payload[start:pos])
            start = pos + 4
    parts.append(payload[start:])
    out = bytearray()
    for i, part in enumerate(parts):
        cflag = 0 if len(parts) == 1 else (1 if i == 0 else (3 if i == len(parts) - 1 else 2))
        out += struct.pack("<II", MAGIC, (cflag << 29) | len(part)) + part
        out += b"\0" * (-len(part) % 4)
    return bytes(out)


def write_recordio(prefix, items, meta: bool = True) -> tuple[Path, Path]:
    """Write ``prefix.rec`` / ``prefix.idx`` from ``(label, encoded image)`` pairs, keys 1..N,
    preceded (``meta``) by insightface's header record 0 (flag 2, label = [N + 1, N + 1])."""
    prefix = Path(prefix)
    rec, idx = prefix.with_suffix(".rec"), prefix.with_suffix(".idx")
    items = list(items)
    with open(rec, "wb") as f, open(idx, "w") as fi:
        if meta:
            fi.write(f"0\t{f.tell()}\n")
            f.write(_frame(pack_record([len(items) + 1, len(items) + 1], b"")))
        for key, (label, image) in enumerate(items, start=1):
            fi.write(f"{key}\t{f.tell()}\n")
            f.write(_frame(pack_record(label, image, key)))
    return rec, idx


class RecordIO:
    """Random access to an indexed RecordIO file (``.rec`` + ``.idx``), pure Python."""

    def __init__(self, rec, idx):
        self.rec, self.idx = Path(rec), Path(idx)
        for p in (self.rec, self.idx):
            if not p.is_file():
                raise DataError(f"{p} does not exist; an insightface dataset directory holds "
                                f"train.rec and train.idx")
        self.offsets: dict[int, int] = {}
        with open(self.idx) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    key, off = line.split("\t")
                    self.offsets[int(key)] = int(off)
                except ValueError:
                    raise DataError(f"{self.idx} line {n} is {line.strip()!r}; expected "
                                    f"'key<TAB>offset'") from None
        self.size = self.rec.stat().st_size
        self._fd, self._pid = None, None

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():        # one descriptor per process
            self._fd, self._pid = os.open(self.rec, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, key: int) -> bytes:
        """The payload of record ``key`` (multi-part records joined)."""
        if key not in self.offsets:
            raise DataError(f"{self.idx} has no record {key}")
        pos, out = self.offsets[key], bytearray()
        while True:
            head = os.pread(self._file(), 8, pos)
            if len(head) < 8:
                raise DataError(f"{self.rec}: record {key} at offset {pos} runs past the end of "
                                f"the file ({self.size} bytes); is {self.idx} from another "
                                f".rec?")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise DataError(f"{self.rec}: no record at offset {pos} (key {key}): found "
                                f"0x{magic:08X} instead of the RecordIO magic 0x{MAGIC:08X}; the "
                                f".idx offsets do not match this .rec, or the file is corrupt")
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            body = os.pread(self._file(), length, pos + 8)
            if len(body) < length:
                raise DataError(f"{self.rec}: record {key} is truncated ({len(body)} of "
                                f"{length} bytes)")
            out += body
            pos += 8 + length + (-length % 4)
            if cflag in (0, 3):
                return bytes(out)
            out += struct.pack("<I", MAGIC)            # a split point: the magic was removed

    @staticmethod
    def unpack(payload: bytes, where: str = "record"):
        """``(label, image bytes)``: label a float, or a list when the header's flag > 0."""
        if len(payload) < _HEADER.size:
            raise DataError(f"{where}: {len(payload)} bytes, shorter than the 24-byte "
                            f"insightface header")
        flag, label, _, _ = _HEADER.unpack_from(payload)
        rest = payload[_HEADER.size:]
        if flag > 0:
            if len(rest) < 4 * flag:
                raise DataError(f"{where}: header announces {flag} labels, the record is too "
                                f"short")
            label = list(struct.unpack_from(f"<{flag}f", rest))
            rest = rest[4 * flag:]
        return label, rest


# ---- datasets --------------------------------------------------------------------------------

class FaceSet:
    """Images with identity labels: ``len``, ``num_classes``, ``img_size``;
    ``label_of(indices)`` (n,) int64; ``image_count(ids)`` images of each identity;
    ``image_index(ids, k)`` the index of the ``k``-th image of each identity; ``load(indices)``
    normalised float images (n, 3, S, S). Real sets keep ``labels`` (N,) in memory."""
    num_classes: int
    img_size: int
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def label_of(self, indices: torch.Tensor) -> torch.Tensor:
        return self.labels[indices]

    def _index_identities(self) -> None:
        self._order = torch.argsort(self.labels, stable=True)
        self._counts = torch.bincount(self.labels, minlength=self.num_classes)
        self._starts = torch.cumsum(self._counts, 0) - self._counts

    def image_count(self, ids: torch.Tensor) -> torch.Tensor:
        return self._counts[ids]

    def image_index(self, ids: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self._order[self._starts[ids] + k]

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class RecordFaces(FaceSet):
    """insightface ``train.rec`` / ``train.idx`` (see the module docstring)."""

    def __init__(self, root, img_size: int):
        root = Path(root)
        self.img_size = img_size
        self.io = RecordIO(root / "train.rec", root / "train.idx")
        keys = sorted(self.io.offsets)
        label0, _ = RecordIO.unpack(self.io.read(keys[0]), f"{self.io.rec} record {keys[0]}")
        if keys[0] == 0 and isinstance(label0, list) and label0:
            self.keys = list(range(1, int(label0[0])))
        else:
            self.keys = keys
        if not self.keys:
            raise DataError(f"{self.io.rec} holds no image records")
        labels = []
        for k in self.keys:                   # headers only: 32 bytes a record
            head = os.pread(self.io._file(), 8 + _HEADER.size + 4, self.io.offsets.get(k, -1)) \
                if k in self.io.offsets else b""
            if len(head) < 8 + _HEADER.size or struct.unpack_from("<I", head)[0] != MAGIC:
                self.io.read(k)               # raises the precise error
            flag, label = struct.unpack_from("<If", head, 8)
            if flag > 0:
                label = struct.unpack_from("<f", head, 8 + _HEADER.size)[0]
            labels.append(int(label))
        self.labels = torch.tensor(labels, dtype=torch.long)
        if self.labels.min() < 0:
            raise DataError(f"{self.io.rec} has negative labels")
        self.num_classes = int(self.labels.max()) + 1
        self._index_identities()

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(indices), 3, self.img_size, self.img_size)
        for n, i in enumerate(indices.tolist()):
            key = self.keys[i]
            where = f"{self.io.rec} record {key}"
            _, img = RecordIO.unpack(self.io.read(key), where)
            out[n] = normalize_images(_decode(img, self.img_size, where))
        return out


class FolderFaces(FaceSet):
    """``root/<identity>/*.jpg`` (identities in sorted order)."""

    def __init__(self, root, img_size: int):
        root = Path(root)
        self.img_size = img_size
        dirs = sorted(d for d in root.iterdir() if d.is_dir())
        if not dirs:
            raise DataError(f"{root} has no identity folders; expected {root}/<identity>/*.jpg")
        self.paths, labels = [], []
        for label, d in enumerate(dirs):
            files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            if not files:
                raise DataError(f"identity folder {d} has no images ({', '.join(IMAGE_EXTS)}); "
                                f"remove it or add its images")
            self.paths += files
            labels += [label] * len(files)
        self.identities = [d.name for d in dirs]
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.num_classes = len(dirs)
        self._index_identities()

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(indices), 3, self.img_size, self.img_size)
        for n, i in enumerate(indices.tolist()):
            path = self.paths[i]
            out[n] = normalize_images(_decode(path.read_bytes(), self.img_size, str(path)))
        return out


# ---- the generated identity dataset -----------------------------------------------------------

_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_uniform(n: int, *keys) -> torch.Tensor:
    """``(len, n)`` uniforms in [0, 1), a pure function of the integer key arrays (broadcast)."""
    keys = np.broadcast_arrays(*[np.asarray(k, dtype=np.int64) for k in keys])
    h = np.full(keys[0].shape, _GOLD, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in keys:
            h = _mix(h ^ (k.astype(np.uint64) + _GOLD))
        cols = _mix(h[..., None] + np.arange(1, n + 1, dtype=np.uint64) * _GOLD)
    return torch.from_numpy(((cols >> np.uint64(11)).astype(np.float64) * 2.0 ** -53)
                            .astype(np.float32))


def _gauss(u, v, cu, cv, su, sv):
    return torch.exp(-((u - cu) / su) ** 2 - ((v - cv) / sv) ** 2)


def render_faces(ident: torch.Tensor, nuis: torch.Tensor, noise: torch.Tensor, size: int,
                 nuisance: float = 1.0) -> torch.Tensor:
    """Faces in [0, 1] ``(n, 3, size, size)`` from identity uniforms ``ident`` (n, 32), nuisance
    uniforms ``nuis`` (n, 16) and pixel noise uniforms ``noise`` (n, 3, size, size)."""
    n = ident.shape[0]
    I = lambda k: ident[:, k].view(n, 1, 1)           # noqa: E731
    Nu = lambda k: (nuis[:, k].view(n, 1, 1) - 0.5) * nuisance   # centred, scaled  # noqa: E731
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(t, t, indexing="ij")
    # pose: the inverse similarity transform into face coordinates (u right, v down)
    ang, scale = Nu(0) * 0.5, 1 + Nu(1) * 0.25
    dx, dy = Nu(2) * 0.24, Nu(3) * 0.24
    xs, ys = (x - dx) / scale, (y - dy) / scale
    u = torch.cos(ang) * xs + torch.sin(ang) * ys
    v = -torch.sin(ang) * xs + torch.cos(ang) * ys
    # identity geometry
    rx, ry = 0.52 + 0.16 * I(0), 0.66 + 0.14 * I(1)
    chin = 0.6 * I(2)                                   # narrower towards the chin
    ww = rx * (1 - chin * (v / ry).clamp(min=0) ** 2 * 0.5)
    face = torch.sigmoid((1 - (u / ww) ** 2 - ((v - 0.05) / ry) ** 2) * 14)
    hairline = -ry * (0.25 + 0.45 * I(3))
    hair = torch.sigmoid((1.1 - (u / (rx * 1.12)) ** 2 - ((v + 0.02) / (ry * 1.08)) ** 2) * 10) \
        * torch.sigmoid((hairline - v) * 18)
    es, ey, esz = 0.18 + 0.16 * I(4), -0.16 + 0.14 * I(5), 0.055 + 0.05 * I(6)
    blink = 1 + Nu(4).clamp(min=0) * 2.5
    eyes = _gauss(u, v, -es, ey, esz, esz / blink) + _gauss(u, v, es, ey, esz, esz / blink)
    bh, bt, tilt = 0.1 + 0.08 * I(7), 0.02 + 0.035 * I(8), (I(9) - 0.5) * 0.6
    brows = (_gauss(u, v - tilt * (u + es), -es, ey - bh, 0.13, bt)
             + _gauss(u, v + tilt * (u - es), es, ey - bh, 0.13, bt))
    nl, nw = 0.12 + 0.14 * I(10), 0.04 + 0.06 * I(11)
    nose = _gauss(u, v, 0.0, 0.12 + 0.5 * nl, nw, nl)
    mw, my, curve = 0.14 + 0.16 * I(12), 0.38 + 0.14 * I(13), (I(14) - 0.5) * 1.6 + Nu(5) * 1.2
    mh = 0.035 + 0.03 * I(15) + Nu(6).clamp(min=0) * 0.06
    mouth = _gauss(u, v - curve * u * u, 0.0, my, mw, mh)
    moles = sum(_gauss(u, v, (I(16 + 3 * k) - 0.5) * 0.8, (I(17 + 3 * k) - 0.5) * 0.9, 0.045,
                       0.045) * (I(18 + 3 * k) > 0.45) for k in range(3))
    texture = 0.12 * I(25) * torch.cos(u * (4 + 10 * I(26)) + v * (4 + 10 * I(27)) + 6.3 * I(28))
    # colours
    skin = torch.stack([0.35 + 0.55 * I(29), 0.25 + 0.45 * I(29) * I(30) + 0.15 * I(30),
                        0.2 + 0.35 * I(30)], 1)                        # (n, 3, 1, 1)
    hair_rgb = torch.stack([0.05 + 0.6 * I(31), 0.04 + 0.4 * I(31) * I(20),
                            0.03 + 0.25 * I(23)], 1)
    bg = 0.2 + 0.6 * nuis[:, 7:10].view(n, 3, 1, 1)
    lip = skin * torch.tensor([1.0, 0.55, 0.6]).view(1, 3, 1, 1)
    face, hair, eyes, brows, nose, mouth, moles, texture = (
        m.unsqueeze(1) for m in (face, hair, eyes, brows, nose, mouth, moles, texture))
    img = bg.expand(n, 3, size, size)
    img = img * (1 - face) + skin * (1 + texture) * face
    img = img * (1 - hair) + hair_rgb * hair
    img = img * (1 - 0.8 * eyes * face) * (1 - 0.7 * brows * face)
    img = img * (1 - 0.25 * nose * face)
    img = img * (1 - mouth * face) + lip * mouth * face
    img = img * (1 - 0.6 * moles * face * (1 - hair))
    # illumination and sensor
    phi = nuis[:, 10].view(n, 1, 1, 1) * 6.283
    light = 1 + (0.2 + 0.6 * nuis[:, 11].view(n, 1, 1, 1)) * nuisance * 0.6 * (
        torch.cos(phi) * x + torch.sin(phi) * y)
    gain = 1 + Nu(12).unsqueeze(1) * 0.6
    contrast = 1 + Nu(13).unsqueeze(1) * 0.6
    img = ((img * light - 0.5) * contrast + 0.5) * gain
    img = img + (noise - 0.5) * (0.06 + 0.1 * nuis[:, 14].view(n, 1, 1, 1)) * nuisance
    return img.clamp(0, 1)


class SynthFaces(FaceSet):
    """Generated identities (see the module docstring): ``num_ids`` identities of
    ``images_per_id`` images each, image index ``i * images_per_id + j``; ``split`` separates
    training identities (0) from verification identities (1)."""

    IDENT, NUIS = 32, 16

    def __init__(self, num_ids: int, images_per_id: int, img_size: int, seed: int = 0,
                 split: int = 0, nuisance: float = 1.0):
        self.num_classes, self.per_id, self.img_size = num_ids, images_per_id, img_size
        self.seed, self.split, self.nuisance = seed, split, nuisance

    def __len__(self) -> int:
        return self.num_classes * self.per_id

    def label_of(self, indices: torch.Tensor) -> torch.Tensor:
        return indices // self.per_id

    def image_count(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.full_like(ids, self.per_id)

    def image_index(self, ids: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return ids * self.per_id + k

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return normalize_images(self.load_uint8(indices))

    def load_uint8(self, indices: torch.Tensor) -> torch.Tensor:
        """The images as 8-bit RGB, as a real dataset stores them."""
        idx = indices.numpy()
        ids, js = idx // self.per_id, idx % self.per_id
        ident = hash_uniform(self.IDENT, self.seed, self.split, ids)
        nuis = hash_uniform(self.NUIS, self.seed, self.split, ids, js + 1)
        s = self.img_size
        pix = np.arange(3 * s * s)
        noise = hash_uniform(1, self.seed, self.split, ids[:, None], js[:, None] + 1,
                             pix[None, :] + 7)
        img = render_faces(ident, nuis, noise.view(len(idx), 3, s, s), s, self.nuisance)
        return (img * 255.0).round().to(torch.uint8)


# ---- verification sets ------------------------------------------------------------------------

class PairSet:
    """Verification data: ``images`` (M, 3, S, S) uint8, ``pairs`` (P, 2) image indices,
    ``issame`` (P,) bool; ``labels`` (M,) identities when known (generated data: TAR@FAR is then
    measured on every pair of images), else None (TAR@FAR on the listed pairs)."""

    def __init__(self, name: str, images, pairs, issame, labels=None):
        self.name, self.images, self.pairs, self.issame, self.labels = (
            name, images, pairs, issame, labels)


def write_bin(path, encoded: list[bytes], issame: list[bool]) -> Path:
    """An insightface verification ``.bin``: pickle of ``(encoded images, issame)``."""
    if len(encoded) != 2 * len(issame):
        raise ValueError(f"{len(encoded)} images for {len(issame)} pairs; need two per pair")
    path = Path(path)
    with open(path, "wb") as f:
        pickle.dump(([bytes(b) for b in encoded], [bool(s) for s in issame]), f, protocol=4)
    return path


def load_bin(path, img_size: int) -> PairSet:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"verification set {path} does not exist; expected an insightface "
                        f".bin (pickle of (images, issame)) such as lfw.bin")
    try:
        with open(path, "rb") as f:
            bins, issame = pickle.load(f, encoding="bytes")
        bins, issame = list(bins), [bool(s) for s in issame]
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not this format"
        raise DataError(f"{path} is not an insightface verification .bin (pickle of "
                        f"(images, issame)): {type(exc).__name__}: {exc}") from None
    if len(bins) != 2 * len(issame) or not issame:
        raise DataError(f"{path} holds {len(bins)} images for {len(issame)} pairs; an "
                        f"insightface .bin has two images per pair")
    images = torch.stack([_decode(b, img_size, f"{path} image {i}")
                          for i, b in enumerate(bins)])
    pairs = torch.arange(len(bins)).view(-1, 2)
    return PairSet(path.stem, images, pairs, torch.tensor(issame))


def synth_pairs(num_ids: int, images_per_id: int, num_pairs: int, img_size: int, seed: int,
                nuisance: float = 1.0) -> PairSet:
    """Held-out generated identities (split 1), every image embedded once, ``num_pairs`` pairs
    half genuine and half impostor (LFW-like), drawn from a seeded generator."""
    if images_per_id < 2 or num_ids < 2:
        raise UsageError(f"generated verification needs at least 2 identities of 2 images; got "
                         f"{num_ids} x {images_per_id}")
    faces = SynthFaces(num_ids, images_per_id, img_size, seed, split=1, nuisance=nuisance)
    images = faces.load_uint8(torch.arange(len(faces)))
    rng = np.random.default_rng(seed + 4242)
    half = num_pairs // 2
    a = rng.integers(0, num_ids, half)
    j = np.stack([rng.choice(images_per_id, 2, replace=False) for _ in range(half)])
    genuine = np.stack([a * images_per_id + j[:, 0], a * images_per_id + j[:, 1]], 1)
    b = rng.integers(0, num_ids, (num_pairs - half, 2))
    b[:, 1] = (b[:, 0] + 1 + rng.integers(0, num_ids - 1, len(b))) % num_ids
    jj = rng.integers(0, images_per_id, (len(b), 2))
    impostor = b * images_per_id + jj
    # interleaved (genuine, impostor, ...) so that every fold of the 10-fold protocol holds both,
    # as LFW's folds do
    order = np.argsort(np.concatenate([np.arange(half) * 2, np.arange(num_pairs - half) * 2 + 1]),
                       kind="stable")
    pairs = torch.from_numpy(np.concatenate([genuine, impostor])[order]).long()
    issame = torch.from_numpy(np.concatenate([np.ones(half, bool),
                                              np.zeros(num_pairs - half, bool)])[order])
    return PairSet("synth", images, pairs, issame, faces.label_of(torch.arange(len(faces))))


# ---- loaders ---------------------------------------------------------------------------------

def flip_mask(n: int, seed: int, step: int, rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 8191 + rank + 3)
    return torch.rand(n, generator=g) < 0.5


def flip_(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    images[mask] = images[mask].flip(-1)
    return images


def pick_pairs(faces: FaceSet, ids: torch.Tensor, generator: torch.Generator):
    """Two random image indices of each identity (the same one twice when it has only one)."""
    count = faces.image_count(ids)
    a = (torch.rand(len(ids), generator=generator) * count).long()
    b = (torch.rand(len(ids), generator=generator) * (count - 1).clamp(min=1)).long()
    b = torch.where(count > 1, b + (b >= a).long(), a)      # b != a when possible
    return faces.image_index(ids, a), faces.image_index(ids, b)


def f2c_indices(faces: FaceSet, num_id: int, num_inst: int, seed: int, rank: int, world: int,
                start_step: int):
    """Per step, this rank's ``(x indices, y indices)``: ``num_id`` identities (global) through
    the identity loader, ``num_inst`` instances (global) through the instance loader."""
    ids = EpochSampler(faces.num_classes, num_id, seed=seed + 1, rank=rank, world=world)
    inst = EpochSampler(len(faces), num_inst, seed=seed, rank=rank, world=world)
    ids.seek(start_step)
    inst.seek(start_step)
    step = start_step
    while True:
        g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 131 + rank + 11)
        a, b = pick_pairs(faces, next(ids), g)
        i = next(inst)
        h = len(i) // 2
        yield step, torch.cat([a, i[:h]]), torch.cat([b, i[h:]])
        step += 1


def instance_indices(faces: FaceSet, batch: int, seed: int, rank: int, world: int,
                     start_step: int):
    """Per step, this rank's share of ``batch`` instances."""
    inst = EpochSampler(len(faces), batch, seed=seed, rank=rank, world=world).seek(start_step)
    step = start_step
    while True:
        yield step, next(inst)
        step += 1


# ---- the dataset of a run -------------------------------------------------------------------

def build_train_set(cfg) -> FaceSet:
    """The training images of ``cfg``: ``--data`` (RecordIO, or identity folders), or generated."""
    if not cfg.data:
        return SynthFaces(cfg.num_ids, cfg.images_per_id, cfg.img_size, cfg.seed,
                          nuisance=cfg.nuisance)
    root = Path(cfg.data)
    if not root.is_dir():
        raise DataError(f"--data {root} does not exist; give a directory with train.rec + "
                        f"train.idx (insightface) or one folder of images per identity")
    if (root / "train.rec").exists() or (root / "train.idx").exists():
        return RecordFaces(root, cfg.img_size)
    return FolderFaces(root / "train" if (root / "train").is_dir() else root, cfg.img_size)


def build_val_sets(cfg) -> list[PairSet]:
    """The verification sets: ``DIR/<name>.bin`` for each of ``--val_targets`` (default: every
    .bin in ``--data``), or the generated held-out identities."""
    if not cfg.data:
        return [synth_pairs(cfg.val_ids, cfg.val_images_per_id, cfg.val_pairs, cfg.img_size,
                            cfg.seed, cfg.nuisance)]
    root = Path(cfg.data)
    names = [n for n in cfg.val_targets.split(",") if n.strip()] if cfg.val_targets else \
        sorted(p.stem for p in root.glob("*.bin"))
    if not names:
        raise DataError(f"{root} holds no verification .bin (lfw.bin, cfp_fp.bin, "
                        f"agedb_30.bin); copy them there or name them with --val_targets")
    return [load_bin(root / f"{n.strip()}.bin", cfg.img_size) for n in names]
