"""Models: the paper's parameter counts, real sharing in WideNet, forward outputs."""
import copy

import pytest
import torch

from widenet.models import count_parameters, create_model, list_models

# arXiv 2107.11817 v3 Table 1, #params in millions (the paper's values are floor(count / 1e6))
PAPER_PARAMS_M = {"vit_b16": 87, "vit_l16": 305, "vit_moe_b": 128, "vit_moe_l": 406,
                  "widenet_b": 29, "widenet_l": 40, "widenet_h": 63}


def test_registry_lists_paper_and_tiny_models():
    names = list_models()
    for name in list(PAPER_PARAMS_M) + ["vit_tiny", "vit_moe_tiny", "widenet_tiny"]:
        assert name in names
    assert list_models("widenet_*") == ["widenet_b", "widenet_h", "widenet_l", "widenet_tiny"]


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_parameter_counts_match_paper(name):
    with torch.device("meta"):  # no weights allocated
        model = create_model(name)
    assert count_parameters(model) // 10**6 == PAPER_PARAMS_M[name]


def test_parameter_ratios_of_the_abstract():
    with torch.device("meta"):
        m = {n: count_parameters(create_model(n)) // 10**6 for n in PAPER_PARAMS_M}
    assert f"{m['widenet_h'] / m['vit_b16']:.2f}" == "0.72"
    assert f"{m['widenet_l'] / m['vit_b16']:.2f}" == "0.46"
    assert f"{m['widenet_l'] / m['vit_l16']:.2f}" == "0.13"


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
    shared = [net.blocks[0].attn.qkv.weight, net.blocks[0].ffn.experts.w1,
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
