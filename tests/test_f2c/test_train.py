"""Training on the shared core: a tiny F2C run learns (verification accuracy well above the
untrained net's and above chance); the symmetric step (EMA first, trial pass undone, committed
pass inserts x's gallery features); resume is exact, pool included; eval reproduces the run's
evaluation; bf16 autocast trains every method; bad input ends with one line; the reproduce and
bench smoke modes write their tables."""
import copy
import json

import pytest
import torch

from f2c import bench, reproduce
from f2c.config import PRESETS, Config
from f2c.eval import main as eval_main
from f2c.train import FaceTask
from f2c.train import main as train_main
from shared.parallel.dist import DistEnv
from shared.train import load_checkpoint, read_metrics
from shared.train.config import parse_config

from .test_data import png, images

SMALL = ["--num_ids", "300", "--images_per_id", "6", "--batch_size", "48", "--pool_size", "64",
         "--val_ids", "60", "--val_images_per_id", "3", "--val_pairs", "600", "--quiet"]
TINY = ["--num_ids", "40", "--images_per_id", "3", "--batch_size", "24", "--pool_size", "13",
        "--val_ids", "8", "--val_images_per_id", "2", "--val_pairs", "20", "--quiet",
        "--log_every", "1", "--eval_every", "0"]


def test_tiny_f2c_training_rises_above_chance(tmp_path):
    args = SMALL + ["--steps", "80", "--eval_every", "0", "--out_dir", str(tmp_path),
                    "--run", "learn", "--log_every", "5"]
    untrained = FaceTask(parse_config(Config, PRESETS, args), DistEnv()).evaluate()
    s = train_main(args)
    assert s["step"] == 80
    assert s["synth_acc"] > 0.75 and s["synth_acc"] > untrained["synth_acc"] + 0.08, (
        untrained["synth_acc"], s["synth_acc"])
    rows = [r for r in read_metrics(tmp_path / "learn" / "metrics.jsonl") if "hit_rate" in r]
    # 16 identity pairs + 16 instances per view: the pairs always hit, instances mostly miss
    assert all(0.45 < r["hit_rate"] < 1 for r in rows)
    assert all(r["pool_used"] == 1.0 for r in rows[2:])
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-4:]) / 4
    assert last < first


def test_the_symmetric_step():
    cfg = parse_config(Config, PRESETS, TINY)
    task = FaceTask(cfg, DistEnv())
    model = task.model
    batches = task.batches(0)
    task.step(next(batches), 0)                       # a first step fills part of the pool
    x, y, lx, ly = next(batches)
    pool_before = copy.deepcopy(model.pool)
    g0 = [p.clone() for p in model.gallery.parameters()]
    p0 = [p.detach().clone() for p in model.backbone.parameters()]
    out = task.step((x, y, lx, ly), 1)
    assert out.loss is None and out.metrics["loss"] > 0
    for g, a, b in zip(model.gallery.parameters(), g0, p0):        # EMA once, m = 0.99
        torch.testing.assert_close(g, 0.99 * a + 0.01 * b)
    # the trial pass (gallery y) left no trace; the committed one inserted x's gallery features
    pool_before.insert(model.gallery_features(x), lx.tolist())
    assert torch.equal(pool_before.queue, model.pool.queue)
    assert pool_before.order() == model.pool.order() and pool_before.slots() == model.pool.slots()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_resume_is_exact_pool_included_and_eval_agrees(tmp_path):
    args = TINY + ["--steps", "6", "--out_dir", str(tmp_path), "--lr", "0.05"]
    whole = train_main(args + ["--run", "whole"])
    cut = train_main(args + ["--run", "cut", "--stop_at", "3"])
    assert cut["step"] == 3 and "synth_acc" not in cut
    resumed = train_main(["--resume", str(tmp_path / "cut")])
    rows = {n: [r for r in read_metrics(tmp_path / n / "metrics.jsonl") if "loss" in r]
            for n in ("whole", "cut")}
    assert [r["step"] for r in rows["cut"]] == list(range(1, 7))
    for a, b in zip(rows["whole"], rows["cut"]):
        assert {k: v for k, v in a.items() if k != "time"} == \
            {k: v for k, v in b.items() if k != "time"}
    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["task"]["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["task"]["model"]
    assert a.keys() == b.keys() and "pool._extra_state" in a
    for k in a:
        if k == "pool._extra_state":
            assert all(torch.equal(a[k][f], b[k][f]) for f in ("labels", "order", "slots"))
        else:
            assert torch.equal(a[k], b[k]), k
    assert resumed["synth_acc"] == whole["synth_acc"]
    evaluated = eval_main(["--run", str(tmp_path / "whole")])
    assert evaluated["synth_acc"] == whole["synth_acc"] and evaluated["step"] == 6


@pytest.mark.parametrize("method", ["f2c", "pfc"])
def test_bf16_autocast_trains(method, tmp_path):
    s = train_main(TINY + ["--steps", "2", "--amp", "true", "--method", method,
                           "--out_dir", str(tmp_path)])
    assert s["step"] == 2 and s["last_loss"] == s["last_loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):                # the full FC head too
        from f2c.models import MarginFC, create_backbone
        emb = create_backbone("ir_tiny")(torch.randn(4, 3, 32, 32))
        loss = MarginFC(10, 128, margin_type="arcface")(emb, torch.tensor([1, 2, 3, 9]))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def _write_bad_data(root):
    rec = root / "rec"
    rec.mkdir()
    from f2c.data import write_recordio
    write_recordio(rec / "train", [(0, png(images(1)[0])), (1, b"garbage")])
    lines = (rec / "train.idx").read_text().splitlines()
    (rec / "train.idx").write_text("\n".join(lines[:2] + [lines[2].split("\t")[0] + "\t3"]))
    folders = root / "folders"
    for name in ("a", "b"):
        (folders / name).mkdir(parents=True)
    (folders / "a" / "0.png").write_bytes(png(images(1)[0]))
    return rec, folders


BAD = [
    (["--pool_size", "12"], "must be larger than the 12 gallery features gathered per pass"),
    (["--method", "fc", "--margin_type", "sv"], "--margin_type sv"),
    (["--method", "arc"], "choose one of f2c, fc, pfc"),
    (["--batch_size", "25"], "must be even"),
    (["--img_size", "40"], "multiple of 16"),
    (["--data", "/nonexistent/faces"], "--data /nonexistent/faces does not exist"),
    (["--data", "REC"], "no record at offset 3"),
    (["--data", "FOLDERS"], "has no images"),
    (["--lr", "nan", "--steps", "3"], "nan"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[:2]) for a, _ in BAD])
def test_bad_input_gives_one_line_and_exit_2(argv, message, tmp_path, capsys):
    rec, folders = _write_bad_data(tmp_path)
    argv = [{"REC": str(rec), "FOLDERS": str(folders)}.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as exc:
        train_main(TINY + ["--steps", "2", "--out_dir", str(tmp_path / "runs")] + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and message in err[0], err[0]


def test_reproduce_and_bench_smoke(tmp_path):
    summary, runs, long = reproduce.main(["--smoke", "--out", str(tmp_path), "--methods",
                                          "f2c,fc"])
    assert [r["method"] for r in summary] == [reproduce.LABELS[m] for m in ("f2c", "fc")]
    assert len(runs) == 2 and runs[0]["pool hit rate"] != "-" and runs[1]["pool hit rate"] == "-"
    assert [r["steps"] for r in long] == [3, 3]
    assert "SMOKE" in (tmp_path / "reproduce.md").read_text()
    raw = json.loads((tmp_path / "reproduce_raw.json").read_text())
    assert set(raw) == {"f2c-s0", "fc-s0", "f2c-s0-long", "fc-s0-long"}
    rows = bench.main(["--smoke", "--out", str(tmp_path)])
    fc = [r for r in rows if r["method"] == "full FC"]
    assert fc[-1]["how"].startswith("PROJECTED") and fc[0]["how"] == "measured"
    f2c = [r for r in rows if r["method"].startswith("F2C, Q=64")]
    assert len({r["classifier MB (sizes)"] for r in f2c}) == 1          # flat in C
    assert fc[-1]["classifier MB (sizes)"] > 100 * fc[0]["classifier MB (sizes)"]
    assert (tmp_path / "bench_scaling.md").is_file() and (tmp_path / "bench_paper_pfc.md").is_file()


@pytest.mark.parametrize("method", ["f2c", "pfc"])
def test_worker_processes_load_the_same_batches(method):
    base = TINY + ["--method", method]
    here = FaceTask(parse_config(Config, PRESETS, base), DistEnv()).batches(3)
    there = FaceTask(parse_config(Config, PRESETS, base + ["--workers", "2"]),
                     DistEnv()).batches(3)
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(next(here), next(there)))
