"""Training on the shared core: learning, exact resume from ``--resume RUN`` alone, eval on the
same validation batches as training, 1 process = 2 sequence ranks = a 2 × 2 sequence × data grid,
one-line errors for bad command lines, the MLM data, and the smoke modes of reproduce.py and
bench.py (tables produced, not timed).

Spawned workers call ``main.__wrapped__`` (the script without its exit-code wrapper), so the
process group of the spawn stays up between two runs in the same processes."""
import json
from pathlib import Path

import pytest
import torch

from shared.data.text_corpus import load_corpus
from shared.errors import UsageError
from shared.parallel.dist import spawn
from shared.train import load_checkpoint

from seqpar import bench, reproduce
from seqpar import eval as seqpar_eval
from seqpar import train
from seqpar.data import MLMData

REPO = Path(__file__).resolve().parents[2]
TINY = ["--hidden", "24", "--heads", "3", "--layers", "1", "--ffn", "40", "--seq_len", "24",
        "--batch_size", "4", "--log_every", "1", "--eval_every", "4", "--eval_batches", "2",
        "--warmup_steps", "1", "--lr", "1e-2", "--quiet"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """A small real text corpus (this repository's seqpar sources), quicker to load than the
    default standard-library scan."""
    path = tmp_path_factory.mktemp("corpus") / "seqpar_sources.txt"
    path.write_bytes(b"\n".join(p.read_bytes() for p in sorted((REPO / "seqpar").glob("*.py"))))
    return str(path)


def losses(run: Path, key: str = "loss") -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoint.pt")["task"]["model"]


def one_line_error(capsys, main, argv) -> str:
    """``main(argv)`` must exit with status 2 and print exactly one line on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, (argv, exc.value.code, err)
    assert err[0].startswith("error: ")
    return err[0]


# ----------------------------------------------------------------------------------------------
# one process


def test_train_learns_resumes_exactly_and_eval_matches(tmp_path, corpus, capsys):
    common = TINY + ["--data", corpus, "--out_dir", str(tmp_path), "--steps", "8",
                     "--dropout", "0.1", "--attn_dropout", "0.1"]
    full = train.main(common + ["--run", "full"])
    curve = losses(tmp_path / "full")
    assert full["step"] == 8 and len(curve) == 8 and full["last_loss"] == curve[-1]
    # it learns: from about ln(258) = 5.55 at initialisation, well below within 8 steps
    assert curve[0] > 5.0 and curve[-1] < curve[0] - 0.3, curve
    assert (tmp_path / "full" / "curves.png").is_file()
    # interrupted at step 4, then `--resume RUN` alone: the saved config, the same losses and
    # weights (dropout on: its masks come from (seed, step, rank), not from saved RNG state)
    stopped = train.main(common + ["--run", "split", "--stop_at", "4"])
    assert stopped["step"] == 4
    resumed = train.main(["--resume", "split", "--out_dir", str(tmp_path), "--quiet"])
    assert resumed["step"] == 8
    assert losses(tmp_path / "split") == curve
    a, b = weights(tmp_path / "full"), weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # eval: the same validation batches as train-time validation, so the same numbers
    metrics = seqpar_eval.main(["--run", "full", "--out_dir", str(tmp_path)])
    assert metrics["step"] == 8
    assert metrics["val_loss"] == full["val_loss"] and metrics["val_acc"] == full["val_acc"]
    # a run name is never reused; resume refuses a change of the model
    line = one_line_error(capsys, train.main, common + ["--run", "full"])
    assert "already exists" in line and "--resume" in line
    line = one_line_error(capsys, train.main, ["--resume", str(tmp_path / "split"),
                                               "--hidden", "48"])
    assert "hidden" in line and "cannot change on resume" in line


def test_bad_command_lines_exit_2_with_one_line(tmp_path, corpus, capsys):
    base = TINY + ["--data", corpus, "--out_dir", str(tmp_path)]
    cases = [
        (train.main, base + ["--sequence_parallel", "2"], "unknown config key --sequence_parallel"),
        (train.main, base + ["--mode", "2d"], "choose one of: seq"),
        (train.main, base + ["--seq_parallel", "2"], "start 2 or 4 processes"),
        (train.main, base + ["--heads", "5"], "not divisible by --heads 5"),
        (train.main, base + ["--model", "llama"], "choose one of bert, gpt"),
        (train.main, base + ["--attention", "ulysses", "--lean", "true"], "drop it"),
        (train.main, base + ["--lr", "fast"], "--lr expects float"),
        (train.main, base + ["--grad_clip", "-1"], "--grad_clip must be >= 0"),
        (train.main, base + ["--data", str(tmp_path / "missing")], "no corpus at"),
        (train.main, base + ["--batch_size", "100000"], "fewer than one batch"),
        (seqpar_eval.main, ["--runn", "x"], "unknown config key --runn"),
        (seqpar_eval.main, ["--mode", "1d", "--out_dir", str(tmp_path)], "not a mode of seqpar"),
        (seqpar_eval.main, ["--run", "nowhere", "--out_dir", str(tmp_path)], "no run directory"),
        (seqpar_eval.main, ["--out_dir", str(tmp_path)], "no run with a checkpoint"),
    ]
    for main, argv, expected in cases:
        assert expected in one_line_error(capsys, main, argv), argv
    assert not any(tmp_path.iterdir())                  # no run directory was left behind


def test_layout_errors_name_distinct_valid_sizes():
    with pytest.raises(UsageError, match="start 3 or 6 processes, or use --seq_parallel 1$"):
        train.check_layout(3, 1, 24)                    # not "3 or 3"
    with pytest.raises(UsageError, match="start 4 or 8 processes, or use --seq_parallel 2 or 3$"):
        train.check_layout(4, 6, 24)
    with pytest.raises(UsageError, match="pad or cut it to 24 or 26"):
        train.check_layout(0, 2, 25)
    assert train.check_layout(0, 4, 24) == 4 and train.check_layout(2, 4, 24) == 2
    with pytest.raises(UsageError, match="zigzag layout over 4 ranks.*pad or cut it to 16 or 24"):
        train.check_layout(0, 4, 20, "zigzag")
    with pytest.raises(UsageError, match="3 heads over the 2 ranks.*use 1 or 3 ranks"):
        train.check_layout(0, 2, 24, "contiguous", heads=3)


def test_nan_loss_stops_with_one_line(tmp_path, corpus, capsys):
    line = one_line_error(capsys, train.main, TINY + [
        "--data", corpus, "--out_dir", str(tmp_path), "--steps", "5", "--lr", "1e30",
        "--min_lr", "1e30", "--grad_clip", "0"])
    assert "loss became" in line and "--lr" in line


# ----------------------------------------------------------------------------------------------
# several processes


def layout_worker(env, common, root):
    """On 4 ranks: a 2 sequence × 2 data grid; 4 sequence ranks with the lean attention; eval of
    the one-process run on the grid and on 4 sequence ranks; a grid run stopped (resumed by the
    test on one process); with dropout, a grid run stopped and resumed on the grid. (One spawn: starting processes costs more than these tiny runs.)"""
    run_train, run_eval = train.main.__wrapped__, seqpar_eval.main.__wrapped__
    out = {"grid": run_train(common + ["--run", "grid", "--seq_parallel", "2"]),
           "seq4": run_train(common + ["--run", "seq4", "--lean", "true"]),
           "eval_grid": run_eval(["--run", "one", "--out_dir", root, "--seq_parallel", "2"]),
           "eval_seq4": run_eval(["--run", "one", "--out_dir", root])}
    run_train(common + ["--run", "grid_stop", "--seq_parallel", "2", "--stop_at", "2"])
    drop = common + ["--seq_parallel", "2", "--dropout", "0.1", "--attn_dropout", "0.1"]
    run_train(drop + ["--run", "grid_full"])
    run_train(drop + ["--run", "grid_split", "--stop_at", "2"])
    run_train(["--resume", "grid_split", "--out_dir", root, "--quiet"])
    gpt = common + ["--model", "gpt", "--heads", "4"]
    run_train(gpt + ["--run", "gpt_zigzag4"])
    run_train(gpt + ["--run", "gpt_contiguous4", "--layout", "contiguous"])
    run_train(gpt + ["--run", "gpt_zigzag2x2", "--seq_parallel", "2"])
    run_train(gpt + ["--run", "gpt_lean4", "--lean", "true"])
    run_train(gpt + ["--run", "gpt_ulysses4", "--attention", "ulysses"])
    run_train(common + ["--run", "bert_ulysses4", "--heads", "4", "--attention", "ulysses"])
    return out


def test_layouts_match_one_process_and_resume_on_the_grid(tmp_path, corpus):
    """Dropout off: 4 sequence ranks and 2 sequence × 2 data ranks train like one process, and
    eval on them gives the one-process numbers (float32 rounding of a different summation
    order: 1e-5 relative); a grid run resumes on one process. With dropout, a grid run resumes
    exactly."""
    common = TINY + ["--data", corpus, "--out_dir", str(tmp_path), "--steps", "4",
                     "--dropout", "0", "--attn_dropout", "0"]
    ref = train.main(common + ["--run", "one"])
    train.main(common + ["--run", "gpt_one", "--model", "gpt", "--heads", "4"])
    train.main(common + ["--run", "bert_ulysses1", "--heads", "4"])
    out = spawn(layout_worker, 4, common, str(tmp_path))[0]
    curve = losses(tmp_path / "one")
    train.main(["--resume", "grid_stop", "--out_dir", str(tmp_path), "--quiet",
                "--seq_parallel", "0"])                 # the layout may change on resume
    for run in ("seq4", "grid", "grid_stop"):
        assert losses(tmp_path / run) == pytest.approx(curve, rel=1e-5), run
    for name, got in out.items():
        assert got["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-5), name
        assert got["val_acc"] == pytest.approx(ref["val_acc"], abs=1e-9), name
    assert losses(tmp_path / "grid_split") == losses(tmp_path / "grid_full")
    assert losses(tmp_path / "bert_ulysses4") == pytest.approx(losses(tmp_path / "bert_ulysses1"),
                                                               rel=1e-5)
    # the causal LM: zigzag and contiguous placement, 4 and 2 x 2 ranks, the lean ring and
    # all-to-all all train like one process
    gpt_curve = losses(tmp_path / "gpt_one")
    assert gpt_curve[-1] < gpt_curve[0] - 0.3, gpt_curve
    for run in ("gpt_zigzag4", "gpt_contiguous4", "gpt_zigzag2x2", "gpt_lean4", "gpt_ulysses4"):
        assert losses(tmp_path / run) == pytest.approx(gpt_curve, rel=1e-5), run
    a, b = weights(tmp_path / "grid_full"), weights(tmp_path / "grid_split")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# data, reproduce, bench


def test_mlm_batches(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 200)
    data = MLMData(load_corpus(str(text)), seq_len=32, mask_prob=0.15, min_len_fraction=0.5)
    ids, mask, labels = data.batch("train", torch.arange(8), key=3)
    assert ids.shape == mask.shape == labels.shape == (8, 32)
    assert mask[:, :16].all() and not mask.all()                 # padded tails, length >= 16
    assert (ids[~mask] == data.pad_id).all() and (labels[~mask] == -100).all()
    target = labels != -100
    assert 0.05 < target.float().mean() < 0.3
    assert (ids[target] == data.mask_id).float().mean() > 0.5      # most targets are [MASK]
    again = data.batch("train", torch.arange(8), key=3)
    assert all(torch.equal(x, y) for x, y in zip((ids, mask, labels), again))
    with pytest.raises(UsageError, match="fewer than one window"):
        MLMData(load_corpus(str(text)), seq_len=100_000)


def test_reproduce_and_bench_smoke(tmp_path):
    out = reproduce.main(["--smoke", "--out", str(tmp_path)])
    rows = {(r["method"], r["N"]): r for r in out["memory"]}
    # sequence parallelism: the longest sequence grows with N; TP stops at the head count
    lengths = [rows[("rsa", n)]["max seq len"] for n in (1, 2, 4)]
    assert lengths[0] < lengths[1] < lengths[2]
    assert "impossible" in rows[("tp", 4)]["note"]
    assert all(r["fit error"] < 1e-6 for r in out["memory"] if "fit error" in r)
    assert rows[("lean", 4)]["saved MB"] < rows[("rsa", 4)]["saved MB"]
    for name in ("smoke_memory", "smoke_weak_scaling", "smoke_formulas"):
        assert (tmp_path / f"{name}.md").is_file() and (tmp_path / f"{name}.csv").is_file()
    tables = bench.main(["--smoke", "--out", str(tmp_path)])
    assert {(r["attention"], r["overlap"]) for r in tables["bench"]} == {
        ("rsa", "yes"), ("rsa", "no"), ("lean", "yes"), ("lean", "no")}
    for name in ("bench", "balance", "rsa_vs_a2a"):
        assert (tmp_path / f"smoke_{name}.md").is_file(), name
    # load balance (counted work, not timed): zigzag equal, contiguous not
    work = {(r["attention"], r["layout"]): r["score entries max/mean"] for r in tables["balance"]}
    assert work[("rsa", "zigzag")] <= 1.05 < work[("rsa", "contiguous")]
    # bytes sent: measured = closed form, for every method
    for r in tables["rsa_vs_a2a"]:
        assert r["sent MB/rank"] == pytest.approx(r["closed form MB"], rel=1e-9), r
        assert r["max length at fixed memory"] > 0, r
