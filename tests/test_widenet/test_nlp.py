"""The NLP half (paper v3): exact #params of the registry entries against ALBERT-base's count and
the brief's formula, bf16 autocast, a tiny MLM + SOP run that lowers its loss, a tiny fine-tune
on a GLUE TSV that beats chance, the generated order task, and a malformed TSV named."""
import pytest
import torch

from shared.train import read_metrics
from widenet.models import create_model
from widenet.models.albert import encoder_parameters
from widenet.nlp import FIRST, order_task
from widenet.eval import main as eval_main
from widenet.train import main as train_main

V, E_DIM, POS, D, F_DIM, LAYERS = 30000, 128, 512, 768, 3072, 12
EXPERT = D * F_DIM + F_DIM + F_DIM * D + D                     # one FFN: 4,722,432


def albert_base_count(experts: int = 0) -> int:
    """ALBERT-base written out (vocabulary 30000, 512 positions, 2 segment types, embedding 128,
    width 768, one shared layer, pooler); with E experts: a bias-free router (E x 768), E FFNs
    and 12 x 2 unshared LayerNorms instead of 2 shared ones."""
    embed = V * E_DIM + POS * E_DIM + 2 * E_DIM + 2 * E_DIM     # words, positions, types, LN
    project = E_DIM * D + D
    attn = 4 * (D * D + D)
    norms = 2 * 2 * D * (LAYERS if experts else 1)
    ffn = experts * (EXPERT + D) if experts else EXPERT
    pooler = D * D + D
    return embed + project + attn + norms + ffn + pooler


def test_albert_base_has_albert_bases_published_count():
    with torch.device("meta"):
        model = create_model("albert_base")
    assert encoder_parameters(model) == albert_base_count() == 11_683_584   # published "12M"
    assert round(encoder_parameters(model) / 1e6) == 12


@pytest.mark.parametrize("experts,paper_m", [(4, 26.2), (8, 45.1), (16, 82.8)])
def test_widenet_nlp_counts_against_the_briefs_formula(experts, paper_m):
    """Exact count written out; the brief's 12M + (E-1) 4.72M: each extra expert adds 4.72M
    exactly (FFN + router row), and the total differs from the formula only by the base, which
    the paper rounds to ALBERT's published 12M (ours: 11.72M with the unshared LayerNorms and
    the first router row)."""
    with torch.device("meta"):
        model = create_model(f"widenet_nlp_e{experts}")
    n = encoder_parameters(model)
    assert n == albert_base_count(experts)
    assert round((EXPERT + D) / 1e6, 2) == 4.72
    base = n - (experts - 1) * (EXPERT + D)
    assert round(base / 1e6) == 12 and abs(base - 11_718_144) == 0
    # the paper's 26.2 / 45.1 / 82.8 are exactly 12M + (E-1) x our per-expert increment
    assert round((12e6 + (experts - 1) * (EXPERT + D)) / 1e6, 1) == paper_m
    assert abs(n / 1e6 - paper_m) < 0.35             # the 0.28M of the rounded base


@pytest.mark.parametrize("name", ["albert_tiny", "widenet_nlp_tiny", "albert_base",
                                  "widenet_nlp_e16"])
def test_bf16_autocast_forward_and_backward_nlp(name):
    torch.manual_seed(0)
    kw = dict(dropout=0.0)
    if not name.endswith("tiny"):                    # the structure at width 64, 2 blocks
        kw.update(vocab_size=500, dim=64, heads=4, mlp_dim=128, depth=2)
    model = create_model(name, **kw).eval()
    ids = torch.randint(FIRST, 100, (3, 12))

    def run(amp):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(ids)
            logits = model.mlm_logits(out.hidden).float()
            loss = logits.logsumexp(-1).mean() + 0.01 * out.aux_loss
        loss.backward()
        return logits.detach(), torch.cat([p.grad.float().flatten() for p in model.parameters()
                                           if p.grad is not None])

    ref, g_ref = run(False)
    low, g_low = run(True)
    torch.testing.assert_close(low, ref, atol=0.05, rtol=0.05)
    assert torch.isfinite(g_low).all()
    assert torch.nn.functional.cosine_similarity(g_low, g_ref, dim=0) > 0.9


def test_tiny_mlm_pretraining_lowers_its_loss(tmp_path):
    train_main(["--model", "widenet_nlp_tiny", "--nlp_stage", "pretrain", "--steps", "40",
                "--warmup_steps", "4", "--batch_size", "32", "--lr", "0.02", "--dropout", "0",
                "--eval_every", "40", "--log_every", "1", "--quiet", "--out_dir", str(tmp_path),
                "--run", "pre"])
    mlm = [r["mlm"] for r in read_metrics(tmp_path / "pre" / "metrics.jsonl") if "mlm" in r]
    assert len(mlm) == 40
    first, last = sum(mlm[:8]) / 8, sum(mlm[-8:]) / 8
    assert last < first - 0.05, (first, last)


def write_sst2(root, n_train=256, n_dev=64):
    """SST-2 layout: train.tsv / dev.tsv with a 'sentence<TAB>label' header; the label is the
    sentiment word among neutral filler."""
    g = torch.Generator().manual_seed(0)
    filler = ["the", "film", "a", "story", "of", "it", "is", "was", "and", "plot"]
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            label = int(torch.randint(2, (1,), generator=g))
            words = [filler[int(i)] for i in torch.randint(10, (6,), generator=g)]
            words.insert(int(torch.randint(7, (1,), generator=g)), ["awful", "great"][label])
            lines.append(" ".join(words) + f"\t{label}")
        (root / name).write_text("\n".join(lines) + "\n")


def test_tiny_finetune_on_a_glue_tsv_beats_chance(tmp_path):
    write_sst2(tmp_path / "sst2")
    s = train_main(["--model", "albert_tiny", "--nlp_stage", "finetune", "--data",
                    str(tmp_path / "sst2"), "--seq_len", "12", "--steps", "60",
                    "--warmup_steps", "6", "--batch_size", "32", "--lr", "0.01", "--dropout",
                    "0", "--eval_every", "60", "--quiet", "--out_dir", str(tmp_path)])
    assert s["best_acc"] > 0.75, s          # chance: 0.5 on 64 dev sentences
    with pytest.raises(SystemExit) as exc:    # eval is for the vision runs: one line, exit 2
        eval_main(["--run", s["run_dir"]])
    assert exc.value.code == 2


def test_generated_task_needs_word_order():
    t = order_task(64, 10, 128, seed=0, split=1)
    ids, y = t["ids"], t["labels"]
    # every sequence holds each marker exactly once: the bag of markers is the same for both
    # labels, only their order differs
    assert torch.all((ids == FIRST).sum(1) == 1) and torch.all((ids == FIRST + 1).sum(1) == 1)
    a = (ids == FIRST).float().argmax(1)
    b = (ids == FIRST + 1).float().argmax(1)
    assert torch.equal(y, (a < b).long()) and 0.3 < y.float().mean() < 0.7


def test_a_malformed_glue_tsv_is_named(tmp_path, capsys):
    (tmp_path / "train.tsv").write_text("text\tlabel\nhello\t1\n")
    (tmp_path / "dev.tsv").write_text("text\tlabel\nhello\t1\n")
    with pytest.raises(SystemExit) as exc:
        train_main(["--model", "albert_tiny", "--nlp_stage", "finetune", "--data",
                    str(tmp_path), "--steps", "2", "--warmup_steps", "0", "--quiet",
                    "--out_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "train.tsv" in err[0] and "GLUE" in err[0]
