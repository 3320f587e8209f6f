"""The GPT model: exact parameter counts, causality, grouped-query attention, meta-device build."""

from __future__ import annotations


import pytest
import torch

from largo.presets import ROOT as PRESETS
from largo.config import load_config
from largo.models.generate import generate
from largo.models import build_model, count_params, get_spec, trainable
from largo.models.gpt import GPTConfig as ModelConfig
from largo.models.layers import KVCache


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("kv", [0, 1, 2])
def test_param_count_matches_module(tie: bool, kv: int) -> None:
    cfg = ModelConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=kv, tie_embeddings=tie)
    block = 2 * 64 * 64 + 2 * 64 * (kv or 4) * 16 + 3 * 64 * 192 + 2 * 64  # q and o, k and v, SwiGLU (hidden 192), two norms
    assert trainable(build_model(cfg)) == count_params(cfg).total == 300 * 64 * (1 if tie else 2) + 2 * block + 64


def test_presets_param_count_on_meta() -> None:
    for path in sorted(PRESETS.glob("*.toml")):
        cfg = load_config(path).model
        decided = {"vocab_size": 4096, "num_classes": 10, "image_size": 4 * getattr(cfg, "patch_size", 7), "in_channels": 1}
        for key, value in decided.items():
            if getattr(cfg, key, None) == 0:  # fields the data decides at run time
                setattr(cfg, key, value)
        with torch.device("meta"):
            model = get_spec(cfg.arch).build(cfg)
        counts = count_params(cfg)
        assert counts.total == trainable(model) and counts.per_block == cfg.block_params(), path


def test_causal_future_does_not_leak() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2, max_seq_len=16))
    x = torch.randint(0, 50, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 50
    assert torch.allclose(model(x)[0, :10], model(y)[0, :10], atol=1e-6)
    assert not torch.allclose(model(x)[0, 10:], model(y)[0, 10:])


def test_same_seed_same_init() -> None:
    cfg = ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2)
    torch.manual_seed(3)
    a = build_model(cfg).state_dict()
    torch.manual_seed(3)
    b = build_model(cfg).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_flops_per_token_formula() -> None:
    cfg = ModelConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, mlp_hidden=64, max_seq_len=8)
    block = 4 * 32 * 32 + 3 * 32 * 64 + 2 * 32
    assert cfg.block_params() == block
    assert get_spec("gpt").flops_per_token(cfg) == 6 * (2 * block + 100 * 32) + 12 * 2 * 32 * 8


def test_kv_cache_matches_full_forward() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16))
    x = torch.randint(0, 50, (2, 12))
    cache = [KVCache() for _ in model.trunk.blocks]
    pieces = [model(x[:, :5], cache=cache), model(x[:, 5:6], cache=cache), model(x[:, 6:12], cache=cache)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), model(x), atol=1e-5, rtol=1e-5)


def test_greedy_generation_with_cache_equals_recomputation() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2, max_seq_len=16))
    out = generate(model, [1, 2, 3], max_new_tokens=30, max_seq_len=16, temperature=0.0)
    tokens = [1, 2, 3]
    for _ in range(30):  # reference: full recomputation over the last max_seq_len tokens
        tokens.append(int(model(torch.tensor([tokens[-16:]]))[0, -1].argmax()))
    assert out[:3 + 13] == tokens[:3 + 13]  # identical while the context fits the window
    assert len(out) == 33


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_chunked_linear_cross_entropy_equals_the_plain_one(precision: str) -> None:
    """The head and loss in 8 chunks give the loss and both gradients of logits -> cross-entropy (ignored targets too)."""
    from largo.models.loss import IGNORE, linear_cross_entropy, summed_loss

    torch.manual_seed(0)
    h = torch.randn(300, 32, requires_grad=True)
    w = (0.1 * torch.randn(500, 32)).requires_grad_()
    t = torch.randint(0, 500, (300,))
    t[::7] = IGNORE
    results = []
    for budget in (None, 4 * 500 * 40):  # one piece, then 40 rows per chunk
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = summed_loss(torch.nn.functional.linear(h, w), t) if budget is None else linear_cross_entropy(h, w, t, budget_bytes=budget)
        loss.backward()
        results.append((loss.detach(), h.grad.clone(), w.grad.clone()))
        h.grad = w.grad = None
    (la, ha, wa), (lb, hb, wb) = results
    tol = dict(rtol=1e-5, atol=1e-5) if precision == "fp32" else dict(rtol=2e-2, atol=2e-2)  # bf16 matmuls: a rounding apart
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(hb, ha, **tol)
    torch.testing.assert_close(wb, wa, **tol)


@pytest.mark.parametrize("kv", [4, 2])
def test_math_attention_equals_sdpa(kv: int) -> None:
    """The matmul form (bf16 on CPU, short sequences) computes what SDPA does: causal, grouped-query and padding masks."""
    import torch.nn.functional as F

    from largo.models.layers import math_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 12, 16), torch.randn(2, kv, 12, 16), torch.randn(2, kv, 12, 16)
    keep = torch.rand(2, 1, 1, 12) > 0.3
    keep[..., 0] = True
    for mask, causal in ((None, True), (keep, False)):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=kv != 4)
        torch.testing.assert_close(math_attention(q, k, v, mask, causal), want, rtol=1e-5, atol=1e-5)


def test_export_formats_decide_what_largo_export_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """ArchSpec.export_formats is the one list an export checks: hf, onnx and safetensors alike."""
    from largo.errors import CheckpointError

    get_spec("gpt").check_export("hf")
    get_spec("vit").check_export("onnx")
    monkeypatch.setattr(type(get_spec("vit")), "export_formats", ("safetensors",))
    with pytest.raises(CheckpointError) as info:
        get_spec("vit").check_export("onnx")
    assert str(info.value) == "model.arch = 'vit' does not export as --format onnx; it exports as --format safetensors"
