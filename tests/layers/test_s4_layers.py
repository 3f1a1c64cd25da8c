"""S4 and S4D layers: the DESIGN.md invariants, masking, bidirectional mode, parameters, bad inputs."""

from __future__ import annotations

import pytest
import torch

from mixer_invariants import (
    check_backend_matches_reference,
    check_batch_independent,
    check_causal,
    check_split_matches_whole,
    check_step_matches_forward,
)
from numerics import TOL, assert_close, randn
from ssmkit.layers.s4 import S4, S4State
from ssmkit.layers.s4d import S4D, S4DState
from ssmkit.ops.backends import BackendUnavailableError

Bsz, L, D = 2, 63, 60
CONFIGS = {
    "s4d-legs-zoh": (S4D, dict(init="legs")),
    "s4d-inv-bilinear": (S4D, dict(init="inv", discretization="bilinear")),
    "s4d-lin-zoh": (S4D, dict(init="lin")),
    "s4d-real-bilinear": (S4D, dict(init="real", discretization="bilinear", d_state=15)),
    "s4-legs-bilinear": (S4, dict(init="legs")),
    "s4-legt-bilinear": (S4, dict(init="legt")),
    "s4-fout-bilinear": (S4, dict(init="fout")),
    "s4-legs-zoh": (S4, dict(init="legs", discretization="zoh")),
}


def build(name: str, gen: torch.Generator, **overrides):
    """The layer, with every parameter perturbed so that channels and modes all differ."""
    cls, kw = CONFIGS[name]
    m = cls(D, **{"d_state": 14, **kw, **overrides})
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * p.abs().mean() * torch.randn(p.shape, generator=gen))
    return m


@pytest.mark.parametrize("name", CONFIGS)
def test_torch_backend_matches_float64_reference(name, gen):
    m = build(name, gen)
    check_backend_matches_reference(m, randn(Bsz, L, D, gen=gen), "torch")


@pytest.mark.parametrize("name", CONFIGS)
def test_step_and_split_match_forward(name, gen):
    m = build(name, gen)
    x = randn(Bsz, L, D, gen=gen)
    check_step_matches_forward(m, x)
    check_split_matches_whole(m, x, 20)
    check_split_matches_whole(m, x, 1)


@pytest.mark.parametrize("name", ["s4d-legs-zoh", "s4-legs-bilinear"])
def test_reference_backend_continues_a_state(name, gen):
    m = build(name, gen).double()
    m.backend = "reference"
    check_split_matches_whole(m, randn(Bsz, L, D, gen=gen, dtype=torch.float64), 31, tol=TOL[torch.float64])


@pytest.mark.parametrize("name", ["s4d-legs-zoh", "s4d-real-bilinear", "s4-legs-bilinear", "s4-legs-zoh"])
def test_causal_and_batch_independent(name, gen):
    m = build(name, gen)
    x = randn(3, L, D, gen=gen)
    check_causal(m, x, 30, gen)
    check_batch_independent(m, x, gen)


@pytest.mark.parametrize("name", ["s4d-legs-zoh", "s4-legs-bilinear"])
def test_bfloat16_forward(name, gen):
    m = build(name, gen)
    x = randn(Bsz, L, D, gen=gen)
    check_backend_matches_reference(m, x, "torch", dtype=torch.bfloat16)
    m16 = m.to(torch.bfloat16)
    assert m16.out_proj.weight.dtype == torch.bfloat16
    for pname in m16.fp32_param_names:
        assert getattr(m16, pname, None) is None or getattr(m16, pname).dtype == torch.float32, pname
    y, state = m16(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and state.h.dtype == torch.float32


@pytest.mark.parametrize("cls", [S4D, S4])
def test_bidirectional(cls, gen):
    m = cls(D, d_state=14, bidirectional=True)
    assert m.n_ssm == 2 * D and not m.causal
    x = randn(3, L, D, gen=gen)
    check_backend_matches_reference(m, x[:2], "torch")
    check_batch_independent(m, x, gen)
    with torch.no_grad():
        y, state = m(x)
        x2 = x.clone()
        x2[:, 40:] = randn(3, L - 40, D, gen=gen)
        y2, _ = m(x2)
    assert state is None
    assert not torch.allclose(y[:, :40], y2[:, :40]), "a bidirectional layer must see the future"
    with pytest.raises(RuntimeError, match="non-causal.*step"):
        m.step(x[:, 0], None)
    with pytest.raises(RuntimeError, match="non-causal.*init_state"):
        m.init_state(3)
    with pytest.raises(RuntimeError, match="non-causal.*`state`"):
        m(x, m.state_type(h=torch.zeros(3, 2 * D, 14)))


@pytest.mark.parametrize("name", ["s4d-lin-zoh", "s4-legs-bilinear"])
def test_left_padding_is_invisible(name, gen):
    """Left-padded samples from a zero state: same outputs at real positions, same final state."""
    m = build(name, gen)
    pads = (23, 5)
    x = randn(Bsz, L, D, gen=gen, scale=10.0)  # loud garbage in the pads
    mask = torch.ones(Bsz, L, dtype=torch.bool)
    for b, p in enumerate(pads):
        mask[b, :p] = False
    with torch.no_grad():
        y, state = m(x, mask=mask)
        for b, p in enumerate(pads):
            y_b, s_b = m(x[b : b + 1, p:])
            assert_close(y[b : b + 1, p:], y_b, TOL[torch.float32], f"sample {b}: output")
            assert_close(state.h[b : b + 1], s_b.h, TOL[torch.float32], f"sample {b}: final state")
        y_nomask, _ = m(x)
    assert not torch.allclose(y_nomask[0, 30:], y[0, 30:]), "the mask had no effect: the check is vacuous"


def test_mask_validation(gen):
    m = S4D(D, d_state=14)
    x = randn(Bsz, L, D, gen=gen)
    with pytest.raises(TypeError, match="`mask` must have dtype bool"):
        m(x, mask=torch.ones(Bsz, L))
    with pytest.raises(ValueError, match=r"`mask` expected shape \(B, L\)=\(2, 63\), got \(2, 62\)"):
        m(x, mask=torch.ones(Bsz, L - 1, dtype=torch.bool))


@pytest.mark.parametrize("cls,N", [(S4D, 14), (S4, 14)])
def test_state_size_and_parameters(cls, N):
    m = cls(D, d_state=N, lr=1e-3)
    meta = m.init_state(4, device="meta")
    assert meta.h.shape == (4, D, N) and meta.h.device.type == "meta"
    for length in (1, 63):
        _, s = m(torch.randn(4, length, D))
        assert s.h.shape == (4, D, N) and s.h.dtype == torch.float32
    for pname in m.fp32_param_names:
        p = getattr(m, pname, None)
        if p is None:
            continue
        assert p.dtype == torch.float32 and p._no_weight_decay, pname
        if pname != "D":
            assert p._optim == {"lr": 1e-3, "weight_decay": 0.0}, pname
    assert not hasattr(m.out_proj.weight, "_no_weight_decay")
    assert (-torch.exp(m.Lambda_log_neg_re) < 0).all()
    assert m.ssm_kernel(10).shape == (10, D)
    assert m.double().Lambda_log_neg_re.dtype == torch.float64


@pytest.mark.parametrize("cls", [S4D, S4])
def test_bad_inputs(cls, gen):
    m = cls(D, d_state=14)
    x = randn(Bsz, L, D, gen=gen)
    with pytest.raises(ValueError, match=r"expected shape \(B, L, D\) with D=60, got \(63, 60\)"):
        m(x[0])
    with pytest.raises(ValueError, match="expected last dimension D=60, got shape"):
        m(x[..., :59])
    with pytest.raises(ValueError, match="channels-first"):
        m(x.transpose(1, 2))
    with pytest.raises(ValueError, match=r"`x_t` expected shape \(B, D\)"):
        m.step(x, m.init_state(Bsz))
    with pytest.raises(TypeError, match=f"`state` must be a {m.state_type.__name__}"):
        m(x, state=torch.zeros(Bsz, D, 14))
    other = S4State if cls is S4D else S4DState  # same shape, another layer's state
    with pytest.raises(TypeError, match=f"`state` must be a {m.state_type.__name__}.*got {other.__name__}"):
        m(x, state=other(h=torch.zeros(Bsz, D, 14)))
    with pytest.raises(ValueError, match="batch size 3 .* input has batch size 2"):
        m(x, state=m.init_state(3))
    with pytest.raises(ValueError, match=r"field `h` expected shape \(2, 60, 14\), got \(2, 60, 16\)"):
        m(x, state=m.state_type(h=torch.zeros(Bsz, D, 16)))
    with pytest.raises(TypeError, match="must have dtype in"):
        m(x.to(torch.int64))
    with pytest.raises(ValueError, match="`init` must be one of"):
        cls(D, init="hippo")
    with pytest.raises(ValueError, match="`discretization` must be one of"):
        cls(D, discretization="euler")
    with pytest.raises(ValueError, match="`d_state` must be even"):
        cls(D, d_state=15)
    with pytest.raises(ValueError, match="`backend` must be one of"):
        cls(D, backend="cuda")
    with pytest.raises(ValueError, match="dt_min <= dt_max"):
        cls(D, dt_min=0.1, dt_max=0.01)
    with pytest.raises(TypeError, match="`d_model` must be an int"):
        cls(60.0)
    m.backend = "triton"
    with pytest.raises(BackendUnavailableError, match="'triton' is not implemented"):
        m(x)
