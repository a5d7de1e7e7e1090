"""Training on the shared core: ConAdv's timing (the adversarial images of step t were made from
exactly the weights of step t - tau and exactly the augmented images of step t), gradient
accumulation equal to one large batch, the worker thread equal to the in-line attack, resume that
restores the queue, ConAdv on 2 gloo ranks equal to one process, bad input, and learning."""
import copy
import json

import pytest
import torch

from conadv.attack import fgsm
from conadv.config import PRESETS, Config
from conadv.eval import main as eval_main
from conadv.train import ConAdvTask
from conadv.train import main as train_main
from shared.parallel.comm import CommMeter
from shared.parallel.dist import DistEnv, spawn
from shared.train import fit, load_checkpoint, parse_args, read_metrics

SMALL = ["--epochs", "0", "--micro_batch", "0", "--train_size", "64", "--val_size", "32",
         "--img_size", "8", "--batch_size", "16",
         "--lr", "1", "--trust_coeff", "0.02", "--warmup_steps", "1", "--quiet",
         "--log_every", "1", "--epsilon", "0.03"]


def _cfg(tmp_path, *extra):
    return parse_args(Config, PRESETS, SMALL + ["--out_dir", str(tmp_path)] + list(extra),
                      paper="conadv")


def _rows(run, key="loss"):
    return [(r["step"], r[key]) for r in read_metrics(run / "metrics.jsonl") if key in r]


class Recorder(ConAdvTask):
    """Records the weights at the start of every step and the queue entry each step consumed."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.weights, self.used = {}, {}

    def step(self, batch, step):
        self.weights[step] = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        with CommMeter() as meter:
            out = super().step(batch, step)
        assert meter.stats == {}, f"the step issued collectives: {meter.stats}"
        self.used[step] = self.consumed
        return out


def _attack_with(task, weights, images, labels):
    model = copy.deepcopy(task.attacker.shadow)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(weights[n])
    return fgsm(model, images, labels, task.cfg.epsilon, task.micro)


@pytest.mark.parametrize("tau", [1, 2])
def test_conadv_consumes_at_step_t_what_the_weights_of_t_minus_tau_made_of_step_ts_images(
        tmp_path, tau):
    cfg = _cfg(tmp_path, "--steps", "5", "--tau", str(tau), "--micro_batch", "8",
               "--augment", "autoaugment", "--warmup_steps", "0", "--run", f"tau{tau}")
    task = Recorder(cfg, DistEnv())
    fit(cfg, task)
    for t in range(cfg.steps):
        used = task.used[t]
        source = max(0, t - tau)
        assert (used.step, used.made_at) == (t, source)
        # exactly the augmented images of step t, rebuilt from the data pipeline
        x, y = next(task.stream(t))
        assert torch.equal(used.images, x) and torch.equal(used.labels, y)
        # exactly the weights of step t - tau: recomputed from the recorded weights ...
        assert torch.equal(used.adv, _attack_with(task, task.weights[source], x, y)), t
        if t >= tau:   # ... and not from the weights of step t (that would be DisAdv)
            assert not torch.equal(task.weights[t]["net.fc.weight"],
                                   task.weights[source]["net.fc.weight"])
            assert not torch.equal(used.adv, _attack_with(task, task.weights[t], x, y)), t
        assert (used.adv - x).abs().max() <= cfg.epsilon + 1e-6


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    grads = []
    for micro in ("16", "4"):
        cfg = _cfg(tmp_path, "--mode", "disadv", "--micro_batch", micro, "--run", micro)
        task = ConAdvTask(cfg, DistEnv())
        task.model.eval()                          # BatchNorm aside: running statistics
        x, y = next(task.stream(0))
        x_adv = (x + 0.03 * torch.randn_like(x).sign()).clamp(0, 1)
        out = task.forward_backward(x, y, x_adv)
        assert out.loss is None
        grads.append(({n: p.grad.clone() for n, p in task.model.named_parameters()},
                      out.metrics["loss"]))
    (one, loss1), (acc, loss4) = grads
    assert loss1 == pytest.approx(loss4, abs=1e-6)
    for n in one:
        torch.testing.assert_close(acc[n], one[n], rtol=0, atol=1e-6, msg=n)


def test_worker_thread_and_in_line_attack_give_the_same_run(tmp_path):
    runs = {}
    for concurrent in ("true", "false"):
        cfg = _cfg(tmp_path, "--steps", "4", "--concurrent", concurrent, "--run", concurrent)
        task = ConAdvTask(cfg, DistEnv())
        fit(cfg, task)
        task.close()
        runs[concurrent] = (_rows(tmp_path / concurrent),
                            {n: p.detach().clone() for n, p in task.model.named_parameters()})
    assert runs["true"][0] == runs["false"][0]
    assert all(torch.equal(runs["true"][1][n], runs["false"][1][n]) for n in runs["true"][1])


def test_resume_restores_the_queue_and_continues_exactly(tmp_path):
    args = SMALL + ["--out_dir", str(tmp_path), "--steps", "6", "--tau", "2",
                    "--augment", "randaugment", "--eval_every", "3"]
    whole = train_main(args + ["--run", "whole"])
    cut = train_main(args + ["--run", "cut", "--stop_at", "3"])
    assert cut["step"] == 3
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["task"]
    assert [q["step"] for q in state["queue"]] == [3, 4]          # steps t+1 .. t+tau
    assert [q["made_at"] for q in state["queue"]] == [1, 2]
    resumed = train_main(["--resume", str(tmp_path / "cut")])
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "whole")   # bit-identical
    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["task"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["task"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert resumed["val_acc"] == whole["val_acc"]
    assert eval_main(["--run", str(tmp_path / "whole")])["val_acc"] == whole["val_acc"]


def test_tiny_conadv_run_learns_and_reports_test_accuracy(tmp_path, capsys):
    s = train_main(["--out_dir", str(tmp_path), "--run", "learn", "--epochs", "0",
                    "--micro_batch", "0", "--train_size", "512",
                    "--val_size", "200", "--img_size", "8", "--batch_size", "32", "--steps", "160",
                    "--warmup_steps", "8", "--lr", "2", "--trust_coeff", "0.02", "--quiet"])
    assert s["val_acc"] > 0.3 and s["mode"] == "conadv"             # chance is 0.1
    out = capsys.readouterr().out
    assert "conadv conadv: test top-1" in out
    rows = [r for r in read_metrics(tmp_path / "learn" / "metrics.jsonl") if "loss" in r]
    assert {"clean_loss", "adv_loss", "acc", "adv_acc", "lr"} <= set(rows[-1])


BAD = [
    (["--tau", "0"], "--tau must be at least 1"),
    (["--epsilon", "0"], "--epsilon 0.0 is outside (0, 1]"),
    (["--epsilon", "1.5"], "--epsilon 1.5 is outside (0, 1]"),
    (["--micro_batch", "5"], "--micro_batch 5 does not divide --batch_size 16"),
    (["--micro_batch", "32"], "does not divide --batch_size 16"),
    (["--mode", "pgd"], "choose one of: conadv, disadv, vanilla"),
    (["--model", "vgg"], "--model 'vgg': choose one of"),
    (["--batch_size", "128"], "larger than the 64 training images"),
    (["--data", "/nonexistent/imagenet"], "does not exist"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_gives_one_line_and_exit_2(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_main(SMALL + ["--out_dir", str(tmp_path), "--steps", "2"] + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and message in err[0], err[0]


# ---------------------------------------------------------------------------------------------
# ConAdv on 2 gloo ranks against one process with the same global batch

PARITY = ["--steps", "5", "--tau", "2", "--micro_batch", "8", "--augment", "autoaugment",
          "--eval_every", "5"]


def _parity_run(env, out_dir, run):
    torch.set_num_threads(1)
    cfg = parse_args(Config, PRESETS, SMALL + PARITY + ["--out_dir", out_dir, "--run", run],
                     paper="conadv")
    task = Recorder(cfg, env)
    summary = fit(cfg, task)
    task.close()
    weights = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    return summary, weights, len(task.used)


def test_conadv_on_two_ranks_equals_one_process(tmp_path):
    (one, w1, _), = [_parity_run(DistEnv(), str(tmp_path), "one")]
    ranks = spawn(_parity_run, 2, str(tmp_path), "two")
    (two, w2, steps), (_, w2b, _) = ranks
    assert steps == 5
    for key in ("loss", "clean_loss", "adv_loss", "acc", "adv_acc", "grad_norm"):
        a, b = _rows(tmp_path / "one", key), _rows(tmp_path / "two", key)
        assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 6))
        for (_, x), (_, y) in zip(a, b):
            assert x == pytest.approx(y, rel=1e-5, abs=1e-6), key
    for n in w1:
        torch.testing.assert_close(w2[n], w1[n], rtol=1e-5, atol=1e-6, msg=n)
        assert torch.equal(w2[n], w2b[n])                        # the replicas agree
    # each rank saved its own queue and statistics; eval averages them as the run did
    files = sorted(p.name for p in (tmp_path / "two").glob("checkpoint*.pt"))
    assert files == ["checkpoint-rank0.pt", "checkpoint-rank1.pt"]
    assert eval_main(["--run", str(tmp_path / "two")])["val_acc"] == two["val_acc"]
    saved = json.loads((tmp_path / "two" / "config.json").read_text())
    assert saved["tau"] == 2 and saved["mode"] == "conadv"
