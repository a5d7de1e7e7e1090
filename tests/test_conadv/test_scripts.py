"""The table-producing scripts in their smoke modes (so they cannot rot), and eval's errors."""
import pytest

from conadv import bench, reproduce
from conadv.eval import main as eval_main


def test_reproduce_and_bench_smoke_write_their_tables(tmp_path):
    table, runs = reproduce.main(["--smoke", "--out", str(tmp_path)])
    assert len(runs) == 8 and {r["mode"] for r in runs} == {"vanilla", "DisAdv", "ConAdv",
                                                           "ConAdv + AA"}
    assert all(0 <= r["test_acc"] <= 100 and r["steps"] == 2 for r in runs)
    md = (tmp_path / "scaled_down.md").read_text()
    assert "SMOKE" in md and "75.3 [P]" in md and "76.2 [P]" in md
    assert (tmp_path / "accuracy_vs_batch.png").stat().st_size > 0
    paired = (tmp_path / "scaled_down_paired.md").read_text()
    assert "ConAdv − DisAdv" in paired and "seeds > 0" in paired
    again, _ = reproduce.main(["--smoke", "--out", str(tmp_path / "again"), "--name", "again",
                               "--from_csv", str(tmp_path / "scaled_down_runs.csv")])
    assert again == table                                     # rebuilt without training
    rows = bench.main(["--smoke", "--out", str(tmp_path)])
    assert [r["mode"] for r in rows] == [m[0] for m in bench.MODES]
    assert all(r["ms / step"] > 0 for r in rows)
    assert "SMOKE" in (tmp_path / "bench_step_time.md").read_text()


def test_bad_eval_and_script_command_lines_give_one_line_and_exit_2(tmp_path, capsys):
    cases = [(eval_main, ["--out_dir", str(tmp_path), "--run", "nowhere"], "no run directory"),
             (eval_main, ["--out_dir", str(tmp_path)], "no run with a checkpoint under"),
             (eval_main, ["--out_dir", str(tmp_path), "--mode", "pgd"], "choose one of"),
             (eval_main, ["--out_dir", str(tmp_path), "--mode", "disadv"], "no run of --mode"),
             (reproduce.main, ["--modes", "pgd"], "--modes pgd: choose from"),
             (reproduce.main, ["--batch_sizes", "4096"], "exceeds --train_size"),
             (bench.main, ["--models", "resnet_tiny", "--img_sizes", "8,16"], "one value per")]
    for main, argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1, (argv, err)
        assert message in err[0], (argv, err[0])
