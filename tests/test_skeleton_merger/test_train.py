"""Training on the shared core: a tiny run learns (the loss falls, keypoints align better than
random ones) and ends with mIoU, DAS and a picture; resume is bit-identical; eval finds the run;
bad input gives one line and exit status 2; the reproduce and bench smoke modes run."""
import json

import numpy as np
import pytest

from shared.train import read_metrics
from skeleton_merger import bench, reproduce
from skeleton_merger.data import DataError
from skeleton_merger.eval import main as eval_main
from skeleton_merger.eval import perturb
from skeleton_merger.train import main as train_main
from skeleton_merger.train import predict
from skeleton_merger.models import SkeletonMerger

from .test_data import write_keypointnet, write_shapenet

TINY = ["--num_points", "128", "--npoints", "64,16,8,4", "--radius_scale", "4", "--width",
        "0.25", "--train_shapes", "64", "--val_shapes", "16", "--batch_size", "8", "--quiet",
        "--log_every", "1", "--pictures", "2"]


def _rows(run, key="loss"):
    return [(r["step"], r[key]) for r in read_metrics(run / "metrics.jsonl") if key in r]


def test_tiny_training_learns_and_ends_with_keypoint_metrics(tmp_path, capsys):
    s = train_main(TINY + ["--out_dir", str(tmp_path), "--run", "learn", "--steps", "40",
                           "--category", "airplane", "--eval_every", "10"])
    loss = [v for _, v in _rows(tmp_path / "learn")]
    assert len(loss) == s["step"] == 40
    first, last = np.mean(loss[:5]), np.mean(loss[-5:])
    assert last < 0.8 * first, f"the loss did not decrease: {first:.3f} -> {last:.3f}"
    # keypoints more consistent across shapes than random input points on the same shapes, and
    # more than early in training (at step 10 they still sit near each shape's centroid)
    assert s["das"] > s["random_das"] + 0.2, (s["das"], s["random_das"])
    das, miou = dict(_rows(tmp_path / "learn", "das")), dict(_rows(tmp_path / "learn", "miou@0.1"))
    assert sorted(das) == [10, 20, 30, 40]
    assert das[40] > das[10] + 0.05 and miou[40] > miou[10], (das, miou)
    assert s["val_ccd"] < 1.0
    assert (tmp_path / "learn" / "keypoints.png").stat().st_size > 10_000
    out = capsys.readouterr().out + capsys.readouterr().err
    assert "mIoU@0.1" in out and "DAS" in out and "keypoints.png" in out
    # eval: the same metrics from the checkpoint alone, plus robustness rows
    e = eval_main(["--run", str(tmp_path / "learn"), "--noise", "0,0.02", "--keep", "1,0.5",
                   "--pictures", "0"])
    assert e["das"] == pytest.approx(s["das"]) and e["miou@0.1"] == pytest.approx(s["miou@0.1"])
    assert [r["perturbation"] for r in e["robustness"]] == ["noise", "noise", "keep"]
    assert e["robustness"][0]["das"] == pytest.approx(s["das"])
    assert json.loads((tmp_path / "learn" / "eval.json").read_text())["step"] == 40


def test_resume_continues_bit_identically(tmp_path):
    args = TINY + ["--out_dir", str(tmp_path), "--steps", "4", "--eval_every", "2",
                   "--pictures", "0", "--train_shapes", "16"]
    whole = train_main(args + ["--run", "whole"])
    cut = train_main(args + ["--run", "cut", "--stop_at", "2"])
    assert cut["step"] == 2
    resumed = train_main(["--resume", str(tmp_path / "cut")])
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "whole")
    assert resumed["das"] == whole["das"] and resumed["val_ccd"] == whole["val_ccd"]


def test_perturbations_keep_the_clean_clouds_for_scoring():
    from skeleton_merger.data import procedural
    s = procedural("car", 3, 100, seed=1)
    noisy = perturb(s, noise=0.05, seed=0)
    sub = perturb(s, keep=0.25, seed=0)
    assert np.array_equal(noisy.raw, s.raw) and not np.allclose(noisy.points, s.points)
    assert all(len(np.unique(p, axis=0)) == 25 for p in sub.points)
    assert perturb(s) is s


def test_predict_refuses_clouds_smaller_than_the_encoder_samples():
    model = SkeletonMerger(3, npoints=(48, 16, 8, 4), width=0.25)
    with pytest.raises(DataError, match="fewer than the 48 centres"):
        predict(model, np.zeros((2, 30, 3), np.float32), 8, "cpu")
    bad = np.random.default_rng(0).random((2, 60, 3)).astype(np.float32)
    bad[1, 5, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        predict(model, bad, 8, "cpu")


@pytest.fixture
def shapenet_root(tmp_path):
    write_shapenet(tmp_path / "h5", names=("chair",) * 8 + ("car",) * 2, n=140)
    write_shapenet(tmp_path / "h5", names=("chair",) * 4 + ("car",), n=140, split="val")
    return tmp_path / "h5"


def test_shapenet_and_keypointnet_train_end_to_end(tmp_path, shapenet_root):
    write_keypointnet(tmp_path / "kpn", models=3, n=140)
    s = train_main(TINY + ["--out_dir", str(tmp_path), "--data", str(shapenet_root),
                           "--keypointnet", str(tmp_path / "kpn"), "--category", "chair",
                           "--steps", "2", "--num_points", "128", "--pictures", "0"])
    assert s["step"] == 2 and 0 <= s["das"] <= 1 and "miou@0.1" in s


BAD = [
    (["--num_points", "32"], "fewer than the 64 centres"),
    (["--category", "spaceship"], "choose one of: airplane"),
    (["--batch_size", "1"], "BatchNorm needs at least 2"),
    (["--npoints", "64,16,8"], "--npoints needs 4"),
    (["--k", "1"], "--k must be at least 2"),
    (["--lr", "fast"], "--lr expects float"),
    (["--mode", "tensor"], "choose one of: data"),
    (["--keypointnet", "/nowhere"], "give the HDF5 root with --data"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[a[0][0] for a in BAD])
def test_bad_command_lines_give_one_line_and_exit_2(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_main(TINY + ["--steps", "1", "--out_dir", str(tmp_path)] + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and message in err[0], err[0]


def test_bad_data_gives_one_line_and_exit_2(tmp_path, capsys, shapenet_root):
    nan_root = tmp_path / "nan"
    write_shapenet(nan_root, names=("chair",) * 10, n=140, nan_at=3)
    cases = [(["--data", str(shapenet_root), "--category", "lamp"],
              "valid categories: car, chair"),
             (["--data", str(nan_root), "--category", "chair"], "NaN or inf"),
             (["--data", str(tmp_path / "missing")], "does not exist")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            train_main(TINY + ["--steps", "1", "--out_dir", str(tmp_path)] + argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1, (argv, err)
        assert message in err[0], (argv, err[0])
    with pytest.raises(SystemExit) as exc:
        eval_main(["--out_dir", str(tmp_path / "none")])
    assert exc.value.code == 2 and "no run with a checkpoint" in capsys.readouterr().err


def test_reproduce_and_bench_smoke(tmp_path):
    rows = reproduce.main(["--smoke", "--out", str(tmp_path)])
    assert {r["category"] for r in rows["keypointnet"]} == {"airplane", "chair", "car"}
    assert (tmp_path / "keypointnet.md").is_file() and (tmp_path / "robustness.md").is_file()
    assert (tmp_path / "robustness.png").is_file() and (tmp_path / "keypoints.png").is_file()
    b = bench.main(["--smoke", "--out", str(tmp_path)])
    assert b and (tmp_path / "bench.md").is_file()
    assert all(0 < r["point ops share"] < 1 for r in b if "point ops share" in r)
