"""Attention ops: SDPA vs the float64 reference, masks built independently, KV-cache step, RoPE."""

from __future__ import annotations

import math

import pytest
import torch

from numerics import TOL, assert_close, randn
from ssmkit.ops.attention import (
    ATTENTION_BACKENDS,
    apply_rope,
    attention,
    attention_step,
    rope_cos_sin,
    rope_positions,
)
from ssmkit.ops.attention import sdpa as sdpa_module
from ssmkit.ops.backends import BackendUnavailableError

B, L, H, HKV, DH = 2, 63, 6, 2, 10


def _naive(q, k, v, allowed):
    """Attention by explicit loops over batch, head and query, float64; allowed: (B, Lq, Lk) bool."""
    q, k, v = q.double(), k.double(), v.double()
    out = torch.zeros_like(q)
    r = q.shape[2] // k.shape[2]
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            for i in range(q.shape[1]):
                keys = allowed[b, i].nonzero().flatten()
                if len(keys) == 0:
                    continue
                s = k[b, keys, h // r] @ q[b, i, h] / math.sqrt(q.shape[-1])
                out[b, i, h] = torch.softmax(s, 0) @ v[b, keys, h // r]
    return out


def _qkv(gen, dtype=torch.float32, Lq=L, Lk=L, requires_grad=False):
    q = randn(B, Lq, H, DH, gen=gen, dtype=dtype, requires_grad=requires_grad)
    k = randn(B, Lk, HKV, DH, gen=gen, dtype=dtype, requires_grad=requires_grad)
    v = randn(B, Lk, HKV, DH, gen=gen, dtype=dtype, requires_grad=requires_grad)
    return q, k, v


def _left_pad_mask(pads, length):
    return torch.stack([torch.arange(length) >= p for p in pads])  # (B, L)


CASES = {
    "causal": dict(),
    "window": dict(window=9),
    "bidirectional": dict(causal=False),
    "bidirectional_window": dict(causal=False, window=5),
    "key_padding": dict(key_mask=_left_pad_mask([0, 7], L)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("native_gqa", [True, False], ids=["enable_gqa", "repeated_kv"])
def test_sdpa_matches_reference(gen, case, dtype, native_gqa, monkeypatch):
    """Both ways of running grouped-query heads: SDPA's ``enable_gqa`` (torch >= 2.5) and the
    key/value heads repeated to H (older torch)."""
    if native_gqa and not sdpa_module._SDPA_GQA:
        pytest.skip(f"torch {torch.__version__} has no enable_gqa in SDPA")
    monkeypatch.setattr(sdpa_module, "_SDPA_GQA", native_gqa)
    kwargs = CASES[case]
    q, k, v = _qkv(gen, dtype, requires_grad=True)
    ref_in = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    out = attention(q, k, v, backend="torch", **kwargs)
    ref = attention(*ref_in, backend="reference", **kwargs)
    assert out.dtype == dtype and ref.dtype == torch.float64
    assert_close(out, ref, TOL[dtype], "output")
    g = randn(*ref.shape, gen=gen, dtype=torch.float64)
    (out * g.to(dtype)).sum().backward()
    (ref * g).sum().backward()
    for name, a, b in zip("qkv", (q, k, v), ref_in):
        assert_close(a.grad, b.grad, 3 * TOL[dtype], f"grad of {name}")


def test_reference_equals_explicit_banded_and_padded_masks(gen):
    """The masks the op builds equal masks written out by hand (sliding window + left padding)."""
    q, k, v = _qkv(gen, torch.float64, Lq=23, Lk=23)
    window, pads = 6, [0, 4]
    allowed = torch.zeros(B, 23, 23, dtype=torch.bool)
    for b in range(B):
        for i in range(23):
            for j in range(23):
                allowed[b, i, j] = (i - window < j <= i) and j >= pads[b]
    key_mask = _left_pad_mask(pads, 23)
    want = _naive(q, k, v, allowed)
    for backend in ("reference", "torch"):
        got = attention(q, k, v, window=window, key_mask=key_mask, backend=backend)
        assert_close(got, want, TOL[torch.float64], f"{backend} vs explicit banded mask")
    plain = attention(q, k, v, backend="reference")
    assert not torch.allclose(plain, want), "the window and padding must change the result"


def test_positions_select_keys(gen):
    """Explicit per-sample positions: a query sees exactly the keys at positions <= its own."""
    q, k, v = _qkv(gen, torch.float64, Lq=5, Lk=17)
    k_pos = torch.stack([torch.randperm(17, generator=gen) for _ in range(B)])  # shuffled cache slots
    q_pos = torch.tensor([[3, 5, 8, 12, 16], [0, 1, 2, 10, 11]])
    allowed = k_pos[:, None, :] <= q_pos[:, :, None]
    want = _naive(q, k, v, allowed)
    for backend in ("reference", "torch"):
        got = attention(q, k, v, q_pos=q_pos, k_pos=k_pos, backend=backend)
        assert_close(got, want, TOL[torch.float64], backend)


def test_query_without_keys_outputs_zero_with_finite_grads(gen):
    q, k, v = _qkv(gen, requires_grad=True)
    key_mask = _left_pad_mask([5, 0], L)
    for backend in ("reference", "torch"):
        out = attention(q, k, v, key_mask=key_mask, backend=backend)
        assert torch.equal(out[0, :5], torch.zeros_like(out[0, :5])), f"{backend}: padded queries must give 0"
        assert out[0, 5:].abs().sum() > 0 and out[1, 0].abs().sum() > 0
        out.sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in (q, k, v)), f"{backend}: non-finite gradient"
        for t in (q, k, v):
            t.grad = None


def test_attention_step_matches_reference(gen):
    """One query against a cache with holes equals the reference over the valid slots."""
    S = 37
    q, k, v = _qkv(gen, Lq=1, Lk=S)
    valid = torch.rand(B, S, generator=gen) < 0.6
    valid[:, 0] = True
    out = attention_step(q[:, 0], k, v, valid)  # (B, H, Dh)
    ref = attention(q.double(), k.double(), v.double(), causal=False, key_mask=valid, backend="reference")
    assert_close(out, ref[:, 0], TOL[torch.float32], "step vs reference")
    out_all = attention_step(q[:, 0], k, v, torch.ones_like(valid))
    assert not torch.allclose(out, out_all), "the key mask must matter"


# -- rotary embeddings -------------------------------------------------------------------------------


def _scores(q, k, q_pos, k_pos, rot_dim):
    cq, sq = rope_cos_sin(q_pos, rot_dim)
    ck, sk = rope_cos_sin(k_pos, rot_dim)
    return torch.einsum("bihd,bjhd->bhij", apply_rope(q, cq, sq).double(), apply_rope(k, ck, sk).double())


@pytest.mark.parametrize("rot_dim", [DH, 6])
def test_rope_is_relative(gen, rot_dim):
    """Shifting every position by the same amount leaves q . k unchanged; shifting only q changes it."""
    q, k = randn(B, 13, H, DH, gen=gen), randn(B, 13, H, DH, gen=gen)
    base_pos = rope_positions(B, 13, torch.tensor([0, 3]))
    ref = _scores(q, k, base_pos, base_pos, rot_dim)
    for shift in (1, 977, 123_457):
        shifted = _scores(q, k, base_pos + shift, base_pos + shift, rot_dim)
        assert_close(shifted, ref, 3e-6, f"shift {shift}")
    assert not torch.allclose(_scores(q, k, base_pos + 5, base_pos, rot_dim), ref, atol=1e-3)


def test_rope_matches_complex_rotation(gen):
    """x_a + i x_{a+R/2} is multiplied by exp(i m theta_a); channels past R pass through."""
    rot_dim, base = 6, 500.0
    x = randn(B, 9, H, DH, gen=gen, dtype=torch.float64)
    pos = rope_positions(B, 9, torch.tensor([2, 40]))  # (B, 9)
    cos, sin = rope_cos_sin(pos, rot_dim, base, dtype=torch.float64)
    out = apply_rope(x, cos, sin)
    theta = base ** (-torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim)  # (R/2,)
    z = torch.complex(x[..., :3], x[..., 3:6]) * torch.exp(1j * pos[..., None, None].double() * theta)
    want = torch.cat([z.real, z.imag, x[..., 6:]], -1)
    assert_close(out, want, 1e-12, "rope vs complex rotation")


def test_rope_positions_offsets():
    pos = rope_positions(3, 4, torch.tensor([0, 5, 9]))
    assert pos.tolist() == [[0, 1, 2, 3], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert rope_positions(2, 3, 7).tolist() == [[7, 8, 9], [7, 8, 9]]


# -- bad input ---------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(gen):
    q, k, v = _qkv(gen)
    with pytest.raises(ValueError, match=r"`k` expected shape \(B=2, Lk, Hkv, Dh=10\)"):
        attention(q, k[..., :8], v)
    with pytest.raises(ValueError, match="H=6 query heads must be divisible by the Hkv=4"):
        attention(q, randn(B, L, 4, DH, gen=gen), randn(B, L, 4, DH, gen=gen))
    with pytest.raises(ValueError, match=r"`v` expected shape"):
        attention(q, k, v[:, :-1])
    with pytest.raises(TypeError, match="`key_mask` must have dtype bool"):
        attention(q, k, v, key_mask=torch.ones(B, L))
    with pytest.raises(ValueError, match=r"`key_mask` expected shape \(B=2, Lk=63\)"):
        attention(q, k, v, key_mask=torch.ones(B, L + 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="`q_pos` must be an int32/int64 tensor"):
        attention(q, k, v, q_pos=torch.zeros(B, L))
    with pytest.raises(TypeError, match="`q` must have dtype in"):
        attention(q.int(), k, v)
    with pytest.raises(ValueError, match="`window` must be >= 1"):
        attention(q, k, v, window=0)
    with pytest.raises(ValueError, match="`backend` must be one of"):
        attention(q, k, v, backend="flash")
    with pytest.raises(BackendUnavailableError, match="not implemented"):
        attention(q, k, v, backend="triton")
    with pytest.raises(ValueError, match="`rot_dim` must be even"):
        rope_cos_sin(torch.arange(4), 5)
    cos, sin = rope_cos_sin(torch.arange(L), 2 * DH)
    with pytest.raises(ValueError, match="apply_rope: expected x"):
        apply_rope(q, cos, sin)
    with pytest.raises(TypeError, match="`key_mask` must have dtype bool"):
        attention_step(q[:, 0], k, v, torch.ones(B, L))
    with pytest.raises(ValueError, match=r"`k_cache` expected shape"):
        attention_step(q[:, 0], k[0], v, torch.ones(B, L, dtype=torch.bool))
    assert ATTENTION_BACKENDS.resolve("auto", torch.device("cpu")) == "torch"
