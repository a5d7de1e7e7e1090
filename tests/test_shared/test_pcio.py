"""Readers round-trip files written by the tests, in the real formats, and fail clearly."""
import json

import numpy as np
import pytest

from shared.pointcloud import pcio


def _pts(n=37, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)).astype(np.float32)


@pytest.mark.parametrize("ext", [".ply", ".pcd"])
@pytest.mark.parametrize("binary", [True, False])
def test_point_cloud_round_trip(tmp_path, ext, binary):
    pts = _pts()
    colors = np.random.default_rng(1).integers(0, 256, size=(37, 3)) / 255.0
    normals = _pts(seed=2)
    label = np.arange(37, dtype=np.int32) % 5
    path = pcio.write_points(tmp_path / f"c{ext}", pts, colors=colors, normals=normals,
                             attributes={"label": label}, binary=binary)
    back = pcio.read_points(path)
    # open3d's ASCII PLY keeps 6 significant digits; binary files and ASCII PCD are exact
    tol = dict(rtol=0, atol=0) if binary or ext == ".pcd" else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(back.points, pts, **tol)
    np.testing.assert_allclose(back.normals, normals, **tol)
    np.testing.assert_allclose(back.colors, colors, atol=1 / 255 + 1e-6)
    np.testing.assert_array_equal(back.attributes["label"], label)


def test_xyz_and_off(tmp_path):
    pts = _pts()
    back = pcio.read_points(pcio.write_points(tmp_path / "c.xyz", pts))
    np.testing.assert_allclose(back.points, pts, rtol=1e-6, atol=1e-6)
    from shared.pointcloud.shapes import make_mesh
    m = make_mesh("table", 0)
    path = pcio.write_mesh(tmp_path / "table.off", m.vertices, m.triangles)
    v, t = pcio.read_mesh(path)
    np.testing.assert_allclose(v, m.vertices, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(t, m.triangles)
    np.testing.assert_allclose(pcio.read_points(path).points, m.vertices, atol=1e-6)


def test_hand_written_real_formats(tmp_path):
    """KeypointNet's ASCII PCD and ScanNet's binary PLY with byte colours, written by hand."""
    pts = _pts(5)
    pcd = tmp_path / "kp.pcd"
    header = ["# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7", "FIELDS x y z",
              "SIZE 4 4 4", "TYPE F F F", "COUNT 1 1 1", "WIDTH 5", "HEIGHT 1",
              "VIEWPOINT 0 0 0 1 0 0 0", "POINTS 5", "DATA ascii"]
    pcd.write_text("\n".join(header + [" ".join(f"{v:.6f}" for v in p) for p in pts]) + "\n")
    np.testing.assert_allclose(pcio.read_points(pcd).points, pts, atol=1e-6)

    rgb = np.array([[0, 128, 255]] * 5, dtype=np.uint8)
    vert = np.zeros(5, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"),
                              ("green", "u1"), ("blue", "u1"), ("alpha", "u1")])
    vert["x"], vert["y"], vert["z"] = pts.T
    vert["red"], vert["green"], vert["blue"] = rgb.T
    ply = tmp_path / "scene_vh_clean_2.ply"
    head = ("ply\nformat binary_little_endian 1.0\nelement vertex 5\nproperty float x\n"
            "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
            "property uchar blue\nproperty uchar alpha\nend_header\n")
    ply.write_bytes(head.encode() + vert.tobytes())
    back = pcio.read_points(ply)
    np.testing.assert_array_equal(back.points, pts)
    np.testing.assert_allclose(back.colors, rgb / 255.0, atol=1e-6)


def test_point_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ply"):
        pcio.read_points(tmp_path / "missing.ply")
    bad = tmp_path / "bad.ply"
    bad.write_text("not a ply file\n")
    with pytest.raises(ValueError, match="bad.ply: no points could be read"):
        pcio.read_points(bad)
    (tmp_path / "c.las").write_text("x")
    with pytest.raises(ValueError, match="unsupported extension '.las'"):
        pcio.read_points(tmp_path / "c.las")
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        pcio.write_points(tmp_path / "c.ply", np.zeros((4, 2)))
    with pytest.raises(ValueError, match="attributes need .ply or .pcd"):
        pcio.write_points(tmp_path / "c.xyz", np.zeros((4, 3)), attributes={"l": np.zeros(4)})


# ----------------------------------------------------------------------------- HDF5

def _modelnet(root, sizes=(3, 4, 2)):
    rng = np.random.default_rng(0)
    parts = []
    for i, m in zip((0, 1, 10), sizes):                # 10 sorts after 1 numerically, not as text
        d = rng.normal(size=(m, 64, 3)).astype(np.float32)
        l = rng.integers(0, 40, size=(m, 1)).astype(np.uint8)
        pcio.write_h5(root / f"ply_data_train{i}.h5", data=d, label=l)
        parts.append((d, l))
    pcio.write_h5(root / "ply_data_test0.h5", data=parts[0][0], label=parts[0][1])
    (root / "shape_names.txt").write_text("\n".join(f"class{i}" for i in range(40)) + "\n")
    return parts


def test_modelnet40_h5(tmp_path):
    parts = _modelnet(tmp_path)
    d = pcio.load_modelnet40_h5(tmp_path, "train")
    np.testing.assert_array_equal(d["data"], np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(d["label"], np.concatenate([p[1][:, 0] for p in parts]))
    assert d["label"].dtype == np.int64 and d["shape_names"][3] == "class3"
    assert [f.name for f in d["files"]] == ["ply_data_train0.h5", "ply_data_train1.h5",
                                            "ply_data_train10.h5"]
    assert len(pcio.load_modelnet40_h5(tmp_path, "test")["label"]) == 3


def test_shapenet_part_h5(tmp_path):
    rng = np.random.default_rng(1)
    d0 = rng.normal(size=(3, 50, 3)).astype(np.float32)
    pid = rng.integers(0, 50, size=(3, 50)).astype(np.uint8)
    pcio.write_h5(tmp_path / "ply_data_train0.h5", data=d0, label=np.array([[0], [4], [15]]), pid=pid)
    pcio.write_h5(tmp_path / "ply_data_val0.h5", data=d0[:1], label=np.array([[2]]), seg=pid[:1])
    d = pcio.load_shapenet_part_h5(tmp_path, "train")
    np.testing.assert_array_equal(d["pid"], pid)
    assert d["label"].tolist() == [0, 4, 15]
    d = pcio.load_shapenet_part_h5(tmp_path, "trainval")        # AnTao97's "seg" key accepted
    assert d["data"].shape == (4, 50, 3) and d["label"].tolist() == [0, 4, 15, 2]


def test_shapenetcore_h5_names(tmp_path):
    rng = np.random.default_rng(2)
    for i, names in enumerate((["chair", "airplane"], ["chair"])):
        pcio.write_h5(tmp_path / f"train{i}.h5", data=rng.normal(size=(len(names), 16, 3)),
                      label=rng.integers(0, 55, size=(len(names), 1)))
        (tmp_path / f"train{i}_id2name.json").write_text(json.dumps(names))
    d = pcio.load_shapenetcore_h5(tmp_path, "train")
    assert d["names"] == ["chair", "airplane", "chair"] and d["data"].dtype == np.float32


def test_h5_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pcio.load_modelnet40_h5(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no files matching 'ply_data_train\*.h5'"):
        pcio.load_modelnet40_h5(tmp_path)
    pcio.write_h5(tmp_path / "ply_data_train0.h5", data=np.zeros((2, 8, 3)), label=np.zeros((2, 1)))
    with pytest.raises(ValueError, match="missing dataset 'pid' or 'seg'.*found keys: data, label"):
        pcio.load_shapenet_part_h5(tmp_path)
    pcio.write_h5(tmp_path / "ply_data_train0.h5", data=np.zeros((2, 8, 2)), label=np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"dataset 'data' has shape \(2, 8, 2\)"):
        pcio.load_modelnet40_h5(tmp_path)
    pcio.write_h5(tmp_path / "ply_data_train0.h5", data=np.zeros((2, 8, 3)), label=np.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"'label' has shape \(3,\).*M = 2"):
        pcio.load_modelnet40_h5(tmp_path)
    pcio.write_h5(tmp_path / "ply_data_train0.h5", data=np.zeros((2, 8, 3)), label=[[0], [41]])
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 40\)"):
        pcio.load_modelnet40_h5(tmp_path)
    (tmp_path / "ply_data_test0.h5").write_text("garbage")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        pcio.load_modelnet40_h5(tmp_path, "test")
