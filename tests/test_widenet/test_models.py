"""Models: the paper's parameter counts, real sharing in WideNet, forward outputs."""
import copy

import pytest
import torch

from widenet import reproduce
from widenet.models import count_parameters, create_model, list_models

# arXiv 2107.11817 v3 Table 1, #params in millions (the paper's values are floor(count / 1e6))
PAPER_PARAMS_M = {"vit_b16": 87, "vit_l16": 305, "vit_moe_b": 128, "vit_moe_l": 406,
                  "widenet_b": 29, "widenet_l": 40, "widenet_h": 63}

# the architectures of the brief's table (Sec. 2): width, depth, dense FFN, expert FFN, MoE blocks
ARCH = {"vit_b16": (768, 12, 3072, 0, 0), "vit_l16": (1024, 24, 4096, 0, 0),
        "vit_moe_b": (768, 12, 3072, 4096, 2), "vit_moe_l": (1024, 24, 4096, 4096, 4),
        "widenet_b": (768, 12, 0, 4096, "shared"), "widenet_l": (1024, 24, 0, 4096, "shared"),
        "widenet_h": (1280, 32, 0, 5120, "shared")}


def expected_parameters(name: str) -> int:
    """The parameter count written out from the architecture and the official conventions
    (patch 16 at 224 px, 3 channels, pre-logits Dense + tanh, 1001 classes, constant zero CLS,
    E = 4 experts with a bias-free router), independently of the model code."""
    d, depth, ffn, expert_ffn, moe = ARCH[name]
    E, classes, tokens = 4, 1001, (224 // 16) ** 2 + 1
    embed = 3 * 16 * 16 * d + d + tokens * d                   # patch conv + position embedding
    attn = 4 * (d * d + d)                                      # q, k, v, o with biases
    norms = 2 * 2 * d                                           # two LayerNorms per block
    dense = d * ffn + ffn + ffn * d + d
    experts = E * d + E * (d * expert_ffn + expert_ffn + expert_ffn * d + d)   # router + experts
    head = 2 * d + (d * d + d) + (d * classes + classes)        # final LN, pre-logits, head
    if moe == "shared":                                         # WideNet: one attn, one MoE
        blocks = attn + experts + depth * norms
    else:
        blocks = depth * (attn + norms) + (depth - moe) * dense + moe * experts
    return embed + blocks + head


def test_registry_lists_paper_and_tiny_models():
    names = list_models()
    for name in list(PAPER_PARAMS_M) + ["vit_tiny", "vit_moe_tiny", "widenet_tiny"]:
        assert name in names
    assert list_models("widenet_*") == ["widenet_b", "widenet_h", "widenet_l", "widenet_nlp_e16",
                                        "widenet_nlp_e4", "widenet_nlp_e8", "widenet_nlp_tiny",
                                        "widenet_tiny"]


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_parameter_counts_match_the_architecture_and_the_paper(name):
    with torch.device("meta"):  # no weights allocated
        model = create_model(name)
    assert count_parameters(model) == expected_parameters(name)
    assert expected_parameters(name) // 10**6 == PAPER_PARAMS_M[name]


def test_parameter_ratio_table_against_the_abstract():
    """reproduce's ratio table: the paper's ratios (two decimals, from the floored millions, as
    the paper computed them) and the exact ratios of the written-out counts."""
    counts = {n: expected_parameters(n) for n in PAPER_PARAMS_M}
    rows = {r["comparison"]: r for r in reproduce.ratio_table(counts)}
    cases = [("WideNet-H / ViT-B/16", "widenet_h", "vit_b16", 0.72),
             ("WideNet-L / ViT-B/16", "widenet_l", "vit_b16", 0.46),
             ("WideNet-L / ViT-L/16", "widenet_l", "vit_l16", 0.13)]
    for label, num, den, paper in cases:
        floor_ratio = (counts[num] // 10**6) / (counts[den] // 10**6)
        assert abs(floor_ratio - paper) < 0.005, (label, floor_ratio)
        assert rows[label]["paper ratio"] == f"{paper:.2f}x"
        assert rows[label]["ours (floor M, as the paper)"] == f"{floor_ratio:.3f}x"
        assert rows[label]["ours (exact counts)"] == f"{counts[num] / counts[den]:.3f}x"
    # the abstract's "0.13x" against ViT-MoE-L does not hold (40/406): the table says so
    odd = rows["WideNet-L / ViT-MoE-L"]
    assert odd["ours (floor M, as the paper)"] == f"{40 / 406:.3f}x" != "0.130x"


def test_widenet_shares_one_attention_and_one_moe_with_individual_layernorms():
    net = create_model("widenet_tiny")
    blocks = net.blocks
    assert all(b.attn is blocks[0].attn for b in blocks)
    assert all(b.ffn is blocks[0].ffn for b in blocks)
    assert all(b.ffn.router is blocks[0].ffn.router for b in blocks)
    assert len({id(b.norm1.weight) for b in blocks}) == len(blocks)
    assert len({id(b.norm2.weight) for b in blocks}) == len(blocks)
    # the count equals the sum of distinct pieces (shared counted once)
    d = net.pos_embed.shape[-1]
    pieces = (count_parameters(blocks[0].attn) + count_parameters(blocks[0].ffn)
              + len(blocks) * 4 * d + count_parameters(net.patch_embed) + net.pos_embed.numel()
              + count_parameters(net.norm) + count_parameters(net.pre_logits)
              + count_parameters(net.head))
    assert count_parameters(net) == pieces
    # ViT-MoE does not share
    vmoe = create_model("vit_moe_tiny")
    assert vmoe.blocks[-1].ffn is not vmoe.blocks[-2].ffn
    assert vmoe.blocks[0].attn is not vmoe.blocks[1].attn


def test_shared_gradient_accumulates_over_all_blocks():
    """The gradient of a shared weight equals the sum of the contributions of each block's use:
    contribution i is measured with the other blocks using a frozen copy of the same values."""
    torch.manual_seed(0)
    net = create_model("widenet_tiny", depth=3, dropout=0.0).eval()
    x = torch.randn(2, 3, 32, 32)
    out = net(x)
    (out.logits.square().sum() + out.aux_loss).backward()
    shared = [net.blocks[0].attn.qkv.weight, net.blocks[0].ffn.experts.w1["1"],
              net.blocks[0].ffn.router.weight]
    full = [p.grad.clone() for p in shared]
    parts = [torch.zeros_like(g) for g in full]
    for i in range(3):
        net.zero_grad()
        frozen_attn = copy.deepcopy(net.blocks[0].attn).requires_grad_(False)
        frozen_ffn = copy.deepcopy(net.blocks[0].ffn).requires_grad_(False)
        attn, ffn = net.blocks[0].attn, net.blocks[0].ffn
        for j, b in enumerate(net.blocks):
            b.attn, b.ffn = (attn, ffn) if j == i else (frozen_attn, frozen_ffn)
        out = net(x)
        (out.logits.square().sum() + out.aux_loss).backward()
        for part, p in zip(parts, shared):
            assert p.grad is not None and p.grad.abs().sum() > 0, f"block {i} adds no gradient"
            part += p.grad
        for b in net.blocks:
            b.attn, b.ffn = attn, ffn
    for g, part in zip(full, parts):
        torch.testing.assert_close(g, part, rtol=1e-4, atol=1e-6)


def test_forward_outputs_and_aux_loss_summed_over_blocks():
    net = create_model("widenet_tiny").eval()
    with torch.no_grad():
        net.blocks[0].ffn.router.weight.zero_()  # uniform router: each call's loss is exactly 1
    out = net(torch.randn(3, 3, 32, 32))
    assert out.logits.shape == (3, 10)
    assert len(out.dropped) == 6
    assert out.aux_loss.item() == pytest.approx(6.0)
    vit = create_model("vit_tiny")
    o = vit(torch.randn(2, 3, 32, 32))
    assert o.aux_loss.item() == 0 and o.dropped == []
    assert create_model("vit_moe_tiny")(torch.randn(2, 3, 32, 32)).dropped.__len__() == 2


def test_cls_token_is_a_constant_zero_buffer_and_heads_follow_the_official_code():
    net = create_model("widenet_b", img_size=32, patch_size=16)
    assert "cls_token" in dict(net.named_buffers())
    assert torch.all(net.cls_token == 0)
    assert net.head.out_features == 1001 and net.pool == "gap"
    assert isinstance(net.pre_logits[1], torch.nn.Tanh)
    assert create_model("vit_b16", img_size=32).pool == "cls"
