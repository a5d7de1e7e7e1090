"""One command-line error path: every bad flag, value, mode or size of every paper script prints
exactly one line naming the problem and exits with status 2 (no traceback without --debug)."""
from __future__ import annotations

import importlib

import pytest

CASES = [
    # (module, argv, a word the one line must contain)
    ("tensor_parallel.train", ["--bogus", "1"], "--bogus"),
    ("tensor_parallel.train", ["--mode", "4d"], "1d, 2d, 2p5d, 3d"),
    ("tensor_parallel.train", ["--steps", "0"], "--steps"),
    ("tensor_parallel.eval", ["--bogus", "1"], "--bogus"),
    ("tensor_parallel.eval", ["--run", "/nonexistent/run"], "/nonexistent/run"),
    ("tensor_parallel.bench", ["--bogus"], "--bogus"),
    ("seqpar.train", ["--bogus", "1"], "--bogus"),
    ("seqpar.train", ["--mode", "2d"], "seq"),
    ("seqpar.train", ["--lr", "abc"], "--lr"),
    ("seqpar.eval", ["--bogus", "1"], "--bogus"),
    ("seqpar.eval", ["--run", "/nonexistent/run"], "/nonexistent/run"),
    ("seqpar.reproduce", ["--bogus"], "--bogus"),
    ("widenet.train", ["--bogus", "1"], "--bogus"),
    ("widenet.train", ["--mode", "seq"], "data, expert"),
    ("widenet.train", ["--model", "no_such_model"], "no_such_model"),
    ("widenet.eval", ["--bogus", "1"], "--bogus"),
    ("widenet.eval", ["--run", "/nonexistent/run"], "/nonexistent/run"),
    ("widenet.reproduce", ["--bogus"], "--bogus"),
]


@pytest.mark.parametrize("module,argv,word", CASES, ids=[f"{m} {' '.join(a)}" for m, a, _ in CASES])
def test_bad_command_line_gives_one_line_and_exit_2(module, argv, word, capsys, tmp_path):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(argv + (["--out_dir", str(tmp_path)] if module.endswith(".train") else []))
    assert exc.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and word in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
