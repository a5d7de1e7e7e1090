"""`make export-<paper>`: each exported paper trains a few steps on its own, from its own copy of
shared/, outside the repository."""
import os
import subprocess
import sys

import pytest

from shared.export import ROOT, export

# a few steps of each paper's training, small enough for seconds on a CPU
SHORT_RUNS = {
    "tensor_parallel": ["--preset", "smoke"],
    "seqpar": ["--preset", "tiny", "--stop_at", "3", "--eval_every", "3", "--ckpt_every", "3",
               "--max_bytes", "200000", "--batch_size", "8", "--seq_len", "32"],
    "widenet": ["--preset", "tiny", "--max_steps", "3", "--train_size", "64", "--val_size", "32",
                "--batch_size", "16"],
}


@pytest.mark.parametrize("paper", [p for p in SHORT_RUNS if (ROOT / p).is_dir()])
def test_exported_paper_trains_standalone(paper, tmp_path):
    dest = export(paper, tmp_path / "export")
    assert (dest / paper / "README.md").is_file() and (dest / "shared" / "comm.py").is_file()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE")}
    code = ("import os, sys, runpy; sys.path.insert(0, os.getcwd()); sys.argv[0] = 'train'; "
            "import shared; assert shared.__file__.startswith(os.getcwd()), shared.__file__; "
            f"runpy.run_module('{paper}.train', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code, *SHORT_RUNS[paper],
                          "--out_dir", str(tmp_path / "runs")],
                         cwd=dest, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert any((tmp_path / "runs").rglob("config.json")), "the run wrote no run directory"
