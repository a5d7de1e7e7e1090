"""Seeding streams, run directory (metrics, plot), NaN guard, bench helpers, table writer."""
import json
import math

import pytest
import torch
from torch import nn

import shared.train as shared
from shared.bench import time_fn, write_table
from shared.parallel import RNGStreams
from shared.train import Progress, RunDir, read_metrics


def test_replicated_streams_agree_across_ranks_and_sharded_ones_differ():
    a, b = RNGStreams(seed=7, grid_rank=0), RNGStreams(seed=7, grid_rank=1)
    drop = nn.Dropout(0.5)
    x = torch.ones(64)
    with a.fork("replicated"):
        ra = drop(x)
    with b.fork("replicated"):
        rb = drop(x)
    with a.fork("sharded"):
        sa = drop(x)
    with b.fork("sharded"):
        sb = drop(x)
    assert torch.equal(ra, rb)
    assert not torch.equal(sa, sb)
    # another data-parallel replica draws other replicated masks
    c = RNGStreams(seed=7, grid_rank=0, data_rank=1)
    with c.fork("replicated"):
        rc = drop(x)
    assert not torch.equal(ra, rc)


def test_fork_leaves_the_default_generator_alone_and_streams_advance():
    s = RNGStreams(seed=3)
    torch.manual_seed(11)
    expected = torch.rand(4)
    torch.manual_seed(11)
    with s.fork("sharded"):
        first = torch.rand(4)
    assert torch.equal(torch.rand(4), expected)
    with s.fork("sharded"):
        second = torch.rand(4)
    assert not torch.equal(first, second)
    with pytest.raises(KeyError, match="no RNG stream 'tensor'"):
        with s.fork("tensor"):
            pass


def test_run_dir_writes_config_metrics_checkpoint_and_plot(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class C:
        lr: float = 0.1

    run = RunDir.create(tmp_path / "runs" / "r1", C(), is_main=True)
    for step in range(5):
        run.log(step, loss=1.0 / (step + 1), lr=torch.tensor(0.1))
        if step % 2 == 0:
            run.log(step, val_loss=2.0 / (step + 1))
    assert json.loads((run.path / "config.json").read_text()) == {"lr": 0.1}
    rows = read_metrics(run.metrics_path)
    assert len(rows) == 8 and rows[0]["loss"] == 1.0 and isinstance(rows[0]["lr"], float)
    shared.save_checkpoint({"step": 4}, run.checkpoint_path)
    assert shared.load_checkpoint(run.checkpoint_path)["step"] == 4
    png = run.plot()
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_non_main_ranks_write_nothing(tmp_path):
    run = RunDir.create(tmp_path / "runs" / "r", None, is_main=False)
    run.log(0, loss=1.0)
    assert run.plot() is None and not (tmp_path / "runs").exists()


def test_reopen_drops_metric_rows_past_the_checkpoint(tmp_path):
    run = RunDir.create(tmp_path / "r", None, is_main=True)
    for step in range(1, 8):
        run.log(step, loss=float(step))
    RunDir.reopen(tmp_path / "r", 4, is_main=True)
    assert [r["step"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_nan_loss_stops_with_a_clear_error():
    shared.check_finite(1.5, step=3)
    with pytest.raises(FloatingPointError, match="loss became nan at step 7; lower the learning rate"):
        shared.check_finite(math.nan, step=7)


def test_progress_reports_throughput():
    bar = Progress(3, desc="t", unit_name="img", enabled=False)
    for _ in range(3):
        bar.update(items=10, loss=0.5)
    assert bar.items == 30 and bar.throughput > 0
    bar.close()


_PEAK_CHECK = """
import torch
from shared.bench.measure import PeakMemory
with PeakMemory("cpu") as small:
    torch.ones(10)
with PeakMemory("cpu") as big:
    x = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB, touched
    x += 1
    del x
print(small.delta_bytes, big.delta_bytes)
"""


def test_peak_memory_sees_a_large_allocation():
    # in a fresh process: a long-lived one (the test session) may serve the allocation from
    # pages it already holds, which the RSS does not count again
    import subprocess
    import sys
    from pathlib import Path
    out = subprocess.run([sys.executable, "-c", _PEAK_CHECK], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout.split()
    small, big = int(out[0]), int(out[1])
    assert big >= 48 * 2 ** 20, big
    assert small < big


def test_time_fn_counts_calls():
    calls = []
    stats = time_fn(lambda: calls.append(1), warmup=2, repeat=3)
    assert len(calls) == 5 and stats["repeat"] == 3 and stats["min"] <= stats["median"]


def test_write_table_has_header_and_rows(tmp_path):
    rows = [{"model": "a", "paper": 87.0, "ours": 12.3456789}, {"model": "b", "paper": None, "ours": 1e9}]
    csv_path, md_path = write_table(tmp_path / "res" / "t", rows, "Table 1", command="make x",
                                    seed=3, notes=["paper: Table 1 of arXiv 0000.00000"])
    md = md_path.read_text()
    assert md.startswith("# Table 1") and "`make x`" in md and "seed: 3" in md
    assert "hardware:" in md and "| model | paper | ours |" in md and "| a | 87 | 12.35 |" in md
    assert csv_path.read_text().splitlines()[0] == "model,paper,ours"


def test_saved_tensor_bytes_counts_each_storage_once_and_skips_parameters():
    from shared.bench import SavedTensorBytes

    x = torch.randn(5, 7, requires_grad=True)
    w = nn.Parameter(torch.randn(7, 3))
    with SavedTensorBytes() as saved:
        y = torch.exp(x)          # saves its output y
        y.sin()                   # saves y again: the same storage
    assert saved.bytes == y.numel() * 4
    with SavedTensorBytes([w]) as saved:
        x @ w                     # saves x and w; w is a parameter
    assert saved.bytes == x.numel() * 4


def test_results_dir_keeps_smoke_numbers_out_of_results(tmp_path):
    from shared.bench import ResultsConfig, results_dir
    from shared.train import parse_config

    results = tmp_path / "repo" / "paper" / "results"
    assert results_dir(results) == results
    assert results_dir(results, smoke=True) == tmp_path / "repo" / "runs" / "paper" / "smoke_results"
    assert results_dir(results, out=str(tmp_path / "x"), smoke=True) == tmp_path / "x"
    args = parse_config(ResultsConfig, None, ["--smoke", "--out", "somewhere"], default_preset=None)
    assert args.smoke is True and args.out == "somewhere"


def test_latest_run_is_the_newest_checkpoint_and_names_the_train_target(tmp_path):
    import os

    from shared.train import latest_run

    from shared.errors import UsageError

    root = tmp_path / "runs" / "mypaper"
    with pytest.raises(UsageError, match="make train-mypaper"):
        latest_run(root)
    for i, name in enumerate(("b", "a", "c")):
        (root / name).mkdir(parents=True)
        (root / name / "checkpoint.pt").write_bytes(b"x")
        os.utime(root / name / "checkpoint.pt", (1000 + i, 1000 + i))
    (root / "d").mkdir()  # a run without a checkpoint is skipped
    assert latest_run(root) == root / "c"
    # an expert-parallel run writes one file per rank; it is found too when it is the newest
    (root / "e").mkdir()
    for r in range(2):
        (root / "e" / f"checkpoint-rank{r}.pt").write_bytes(b"x")
        os.utime(root / "e" / f"checkpoint-rank{r}.pt", (2000 + r, 2000 + r))
    assert latest_run(root) == root / "e"


def test_copy_tables_to_readme_replaces_marked_tables_only(tmp_path):
    from shared.bench import copy_tables_to_readme

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t1.md").write_text("# Title\n\n| a |\n|---|\n| 1 |\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n### T1\n<!-- table:t1 -->\nold\n<!-- /table:t1 -->\nend\n")
    assert copy_tables_to_readme(readme, tmp_path / "results") == ["t1"]
    assert readme.read_text() == "intro\n### T1\n<!-- table:t1 -->\n| a |\n|---|\n| 1 |\n<!-- /table:t1 -->\nend\n"
    readme.write_text("<!-- table:t2 -->\n<!-- /table:t2 -->\n")
    with pytest.raises(FileNotFoundError, match="shows the table 't2'"):
        copy_tables_to_readme(readme, tmp_path / "results")


_FREED_CHECK = """
import sys, torch
from shared.bench.measure import _rss_now_kib, rss_follows_tensors
if sys.argv[1] == "fixed":
    assert rss_follows_tensors()
before = _rss_now_kib()
for _ in range(3):                  # the first free raises glibc's dynamic mmap threshold
    x = torch.ones(16 * 2 ** 20 // 4)
    del x
print((_rss_now_kib() - before) * 1024)
"""


def test_rss_follows_tensors_returns_freed_blocks():
    """A freed 16 MiB tensor stays resident under glibc's dynamic threshold and leaves with the
    fixed one (fresh processes: the test session's heap is not a clean start)."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    left = {mode: int(subprocess.run([sys.executable, "-c", _FREED_CHECK, mode], check=True,
                                     capture_output=True, text=True, cwd=root).stdout)
            for mode in ("dynamic", "fixed")}
    assert left["dynamic"] >= 12 * 2 ** 20, left
    assert left["fixed"] < 4 * 2 ** 20, left
