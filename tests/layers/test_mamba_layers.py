"""Mamba and Mamba2 layers: the DESIGN.md invariants, padding masks, init, checkpoint names, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixer_invariants import (
    _states_close,
    check_backend_matches_reference,
    check_batch_independent,
    check_causal,
    check_split_matches_whole,
    check_step_matches_forward,
)
from numerics import TOL, assert_close, randn

from ssmkit.layers.mamba import Mamba, MambaState
from ssmkit.layers.mamba2 import Mamba2, Mamba2State
from ssmkit.ops.scan import SCAN_BACKENDS

D_MODEL, L = 60, 63

# Odd sizes: d_model 60 -> dt_rank 4, d_inner 120; Mamba2: 8 heads of 15 channels, 2 groups, chunk 16 over L=63.
CONFIGS = {
    "mamba": lambda: Mamba(D_MODEL),
    "mamba-statenorm-bias": lambda: Mamba(D_MODEL, d_state=8, d_conv=3, state_norm=True, bias=True),
    "mamba2": lambda: Mamba2(D_MODEL, d_state=16, headdim=15, ngroups=2, chunk_size=16),
    "mamba2-gate-dtlimit": lambda: Mamba2(
        D_MODEL, d_state=16, headdim=15, ngroups=2, chunk_size=16, rmsnorm=False, dt_limit=(0.0, 0.05), bias=True
    ),
    "mamba2-normfirst": lambda: Mamba2(D_MODEL, d_state=8, headdim=20, chunk_size=16, norm_before_gate=True),
}
MAMBA1 = [n for n in CONFIGS if not n.startswith("mamba2")]


def _c_available() -> None:
    reason = SCAN_BACKENDS.available["c"](torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"selective_scan backend 'c' unavailable: {reason}")


def make(name: str, backend: str = "torch"):
    m = CONFIGS[name]()
    m.backend = backend
    return m


# -- invariant 1: fast backends vs the float64 reference ------------------------------------------------


@pytest.mark.parametrize(
    "name,backend", [(n, "torch") for n in CONFIGS] + [(n, "c") for n in MAMBA1]
)
def test_backend_matches_reference(gen, name, backend):
    if backend == "c":
        _c_available()
    check_backend_matches_reference(make(name), randn(2, L, D_MODEL, gen=gen), backend)


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_backend_matches_reference_bf16(gen, name):
    mixer = make(name)
    check_backend_matches_reference(mixer, randn(2, L, D_MODEL, gen=gen), "torch", dtype=torch.bfloat16)


# -- invariants 2-5 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,backend", [(n, "torch") for n in CONFIGS] + [("mamba", "c")]
)
def test_step_matches_forward(gen, name, backend):
    if backend == "c":
        _c_available()
    check_step_matches_forward(make(name, backend), randn(2, L, D_MODEL, gen=gen))


@pytest.mark.parametrize("name,backend", [(n, "torch") for n in CONFIGS] + [("mamba", "c")])
def test_split_matches_whole(gen, name, backend):
    if backend == "c":
        _c_available()
    mixer, x = make(name, backend), randn(2, L, D_MODEL, gen=gen)
    for k in (1, 16, 17, 62):  # chunk boundaries of Mamba2's chunk_size=16, and both ends
        check_split_matches_whole(mixer, x, k)


@pytest.mark.parametrize("name", CONFIGS)
def test_causal_and_batch_independent(gen, name):
    mixer = make(name)
    check_causal(mixer, randn(2, L, D_MODEL, gen=gen), 20, gen)
    check_causal(mixer, randn(2, L, D_MODEL, gen=gen), 47, gen)
    check_batch_independent(mixer, randn(3, L, D_MODEL, gen=gen), gen)


@pytest.mark.parametrize("name", CONFIGS)
def test_bf16_step_matches_forward(gen, name):
    mixer = make(name).to(torch.bfloat16)
    check_step_matches_forward(mixer, randn(2, 20, D_MODEL, gen=gen, dtype=torch.bfloat16), TOL[torch.bfloat16])


# -- padding mask ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mamba", "mamba2", "mamba2-gate-dtlimit"])
def test_left_padding_equals_unpadded(gen, name):
    """Left-padded from a zero state == the real tokens alone: outputs at real positions and final state."""
    mixer = make(name)
    pads = [23, 5, 61, 0]  # 61: fewer real tokens than the conv window
    x = randn(len(pads), L, D_MODEL, gen=gen, scale=3.0)  # the padding holds random garbage, not zeros
    mask = torch.ones(len(pads), L, dtype=torch.bool)
    for i, p in enumerate(pads):
        mask[i, :p] = False
    with torch.no_grad():
        y, state = mixer(x, mask=mask)
        for i, p in enumerate(pads):
            y_i, s_i = mixer(x[i : i + 1, p:])
            assert_close(y[i : i + 1, p:], y_i, TOL[torch.float32], f"sample {i} (pad {p}): output")
            _states_close(state.map(lambda t: t[i : i + 1]), s_i, TOL[torch.float32], f"sample {i} (pad {p})")


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_masked_tokens_contribute_nothing(gen, name):
    """Holes anywhere: changing masked inputs changes no real position's output and not the state."""
    mixer = make(name)
    x = randn(2, L, D_MODEL, gen=gen)
    mask = torch.rand(2, L, generator=gen) > 0.3
    mask[:, -1] = False  # a masked last token must not move the state either
    mask[:, -2] = True  # a real token in the conv window, so that the conv state compared is not all zeros
    x2 = torch.where(mask[..., None], x, randn(2, L, D_MODEL, gen=gen, scale=5.0))
    with torch.no_grad():
        y, s = mixer(x, mask=mask)
        y2, s2 = mixer(x2, mask=mask)
        assert torch.allclose(y[mask], y2[mask], rtol=1e-5, atol=1e-6)
        _states_close(s2, s, 1e-6, "state after masked tokens")
        y3, _ = mixer(x2)  # without the mask the same change is visible: the check is not vacuous
        assert not torch.allclose(y[mask], y3[mask], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_right_padding_keeps_ssm_state(gen, name):
    """Masked tokens are no-ops for the scan (Δ = 0): right padding ends with the last real token's ssm state."""
    mixer = make(name)
    x = randn(2, L, D_MODEL, gen=gen)
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[:, 40:] = False
    with torch.no_grad():
        y, s = mixer(x, mask=mask)
        y_real, s_real = mixer(x[:, :40])
    assert_close(y[:, :40], y_real, TOL[torch.float32])
    assert_close(s.ssm, s_real.ssm, TOL[torch.float32], "ssm state")


@pytest.mark.parametrize("cls", [Mamba, Mamba2])
def test_bad_mask(gen, cls):
    mixer = cls(D_MODEL, headdim=15) if cls is Mamba2 else cls(D_MODEL)
    x = randn(2, 10, D_MODEL, gen=gen)
    with pytest.raises(ValueError, match=rf"{cls.__name__}.forward: argument `mask` expected shape \(B, L\) = \(2, 10\), got \(2, 9\)"):
        mixer(x, mask=torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"argument `mask` must have dtype bool \(True = real token\), got torch.float32"):
        mixer(x, mask=torch.ones(2, 10))


# -- init, parameters, numerics --------------------------------------------------------------------------------


def test_mamba_init():
    m = Mamba(D_MODEL, d_state=8, dt_min=0.002, dt_max=0.05)
    dt = F.softplus(m.dt_proj.bias.double())
    assert m.dt_rank == 4 and dt.shape == (120,)
    assert dt.min() >= 0.002 * (1 - 1e-6) and dt.max() <= 0.05 * (1 + 1e-6)
    assert dt.log().std() > 0.5  # spread log-uniformly, not constant (uniform on [log .002, log .05] has std 0.93)
    assert torch.allclose(torch.exp(m.A_log), torch.arange(1, 9, dtype=torch.float32).expand(120, 8), rtol=1e-6, atol=0)
    assert torch.equal(m.D, torch.ones(120))
    s = 1.0 / math.sqrt(4)
    assert m.dt_proj.weight.abs().max() <= s
    const = Mamba(D_MODEL, dt_init="constant", dt_scale=2.0)
    assert torch.allclose(const.dt_proj.weight, torch.full((120, 4), 2.0 * s))


def test_mamba2_init():
    m = Mamba2(D_MODEL, d_state=8, expand=4, headdim=2, dt_min=0.002, dt_max=0.05)  # 120 heads
    dt = F.softplus(m.dt_bias.double())
    assert dt.min() >= 0.002 * (1 - 1e-6) and dt.max() <= 0.05 * (1 + 1e-6) and dt.log().std() > 0.5
    A = torch.exp(m.A_log)
    assert A.min() >= 1.0 - 1e-6 and A.max() <= 16.0 * (1 + 1e-6) and A.std() > 2.0
    assert torch.equal(m.D, torch.ones(120))


MAMBA_130M = {
    "A_log": (1536, 16), "D": (1536,), "in_proj.weight": (3072, 768), "conv1d.weight": (1536, 1, 4),
    "conv1d.bias": (1536,), "x_proj.weight": (80, 1536), "dt_proj.weight": (1536, 48), "dt_proj.bias": (1536,),
    "out_proj.weight": (768, 1536),
}  # fmt: skip
MAMBA2_130M = {
    "dt_bias": (24,), "A_log": (24,), "D": (24,), "in_proj.weight": (3352, 768), "conv1d.weight": (1792, 1, 4),
    "conv1d.bias": (1792,), "norm.weight": (1536,), "out_proj.weight": (768, 1536),
}  # fmt: skip


@pytest.mark.parametrize("cls,expected", [(Mamba, MAMBA_130M), (Mamba2, MAMBA2_130M)])
def test_checkpoint_names_and_shapes(cls, expected):
    with torch.device("meta"):
        layer = cls(768)
    assert {n: tuple(t.shape) for n, t in layer.state_dict().items()} == expected
    real = cls(64, headdim=32) if cls is Mamba2 else cls(64)
    real.load_state_dict({n: torch.randn(t.shape) for n, t in real.state_dict().items()}, strict=True)


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_numerics_params_stay_float32(name):
    mixer = make(name)
    kept = ["A_log", "D", "dt_proj.bias" if name == "mamba" else "dt_bias"]
    before = {n: p.detach().clone() for n, p in mixer.named_parameters()}
    mixer.to(torch.bfloat16)
    for n, p in mixer.named_parameters():
        if n in kept:
            assert p.dtype == torch.float32 and torch.equal(p, before[n]), f"{n} was rounded"
            assert p._no_weight_decay is True
        else:
            assert p.dtype == torch.bfloat16, n
    mixer.double()
    assert all(p.dtype == torch.float64 for p in mixer.parameters())


def test_op_backends():
    """What each op runs under the layer's backend, the decode steps included ("reference" has no step of its
    own: the steps' PyTorch path)."""
    torch_steps = {"causal_conv1d_step": "torch", "selective_scan_step": "torch"}
    m = Mamba(D_MODEL, backend="reference")
    assert m.op_backends("cpu") == {"causal_conv1d": "reference", "selective_scan": "reference", **torch_steps}
    m.backend = "torch"
    assert m.op_backends("cpu") == {"causal_conv1d": "torch", "selective_scan": "torch", **torch_steps}
    m2 = Mamba2(D_MODEL, headdim=15, backend="reference")
    assert m2.op_backends("cpu") == {"causal_conv1d": "reference", "ssd": "reference", "causal_conv1d_step": "torch",
                                     "ssd_step": "torch", "gated_rms_norm": "reference"}  # fmt: skip
    assert "gated_rms_norm" not in Mamba2(D_MODEL, headdim=15, rmsnorm=False).op_backends()


def test_c_backend_runs_c_scan():
    _c_available()
    assert Mamba(D_MODEL, backend="c").op_backends("cpu") == {
        "causal_conv1d": "torch", "selective_scan": "c", "causal_conv1d_step": "torch", "selective_scan_step": "c"}


@pytest.mark.parametrize("backend", ["torch", "reference", "auto"])
def test_steps_run_the_layers_backend(gen, monkeypatch, backend):
    """A layer's one-token step calls its step ops under its own backend (a "torch" layer decodes on the
    PyTorch steps, not the C or Triton ones "auto" would pick), and gives the same output as the "auto" step."""
    import ssmkit.layers.mamba as mamba_mod
    import ssmkit.layers.mamba2 as mamba2_mod

    asked = []
    for mod, names in ((mamba_mod, ("selective_scan_step", "causal_conv1d_step")),
                       (mamba2_mod, ("ssd_step", "causal_conv1d_step"))):  # fmt: skip
        for name in names:
            fn = getattr(mod, name)
            monkeypatch.setattr(mod, name, lambda *a, _f=fn, _n=name, **k: asked.append((_n, k["backend"])) or _f(*a, **k))
    want = "torch" if backend == "reference" else backend
    for layer in (Mamba(D_MODEL, backend=backend), Mamba2(D_MODEL, headdim=15, backend=backend)):
        x = torch.randn(2, D_MODEL, generator=gen)
        with torch.no_grad():
            y, _ = layer.step(x)
            layer.backend = "auto"
            y_auto, _ = layer.step(x)
        assert_close(y, y_auto.double(), 1e-5, f"{type(layer).__name__} step under {backend!r}")
        assert {b for _, b in asked[: len(asked) // 2]} == {want}
        asked.clear()


# -- bad inputs ---------------------------------------------------------------------------------------------------


def test_bad_config():
    with pytest.raises(ValueError, match=r"Mamba2: `d_inner \(expand \* d_model\)`=120 must be divisible by `headdim`=16"):
        Mamba2(D_MODEL, headdim=16)
    with pytest.raises(ValueError, match=r"Mamba2: `nheads \(d_inner / headdim\)`=8 must be divisible by `ngroups`=3"):
        Mamba2(D_MODEL, headdim=15, ngroups=3)
    with pytest.raises(ValueError, match=r"Mamba: argument `backend` must be one of .*got 'cuda'"):
        Mamba(D_MODEL, backend="cuda")
    with pytest.raises(ValueError, match=r"Mamba: argument `dt_init` must be one of \['random', 'constant'\]"):
        Mamba(D_MODEL, dt_init="xavier")
    with pytest.raises(ValueError, match=r"Mamba: expected 0 < `dt_min` <= `dt_max`, got dt_min=0.1, dt_max=0.01"):
        Mamba(D_MODEL, dt_min=0.1, dt_max=0.01)
    with pytest.raises(TypeError, match=r"Mamba: argument `d_state` must be an int, got float"):
        Mamba(D_MODEL, d_state=16.0)
    with pytest.raises(ValueError, match=r"Mamba2: argument `dt_limit` must be \(lo, hi\) with 0 <= lo < hi"):
        Mamba2(D_MODEL, headdim=15, dt_limit=(0.1, 0.01))


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_bad_inputs_and_states(gen, name):
    mixer = make(name)
    cls = type(mixer).__name__
    x = randn(2, 10, D_MODEL, gen=gen)
    with pytest.raises(ValueError, match=rf"{cls}.forward: argument `x` expected last dimension D=60, got shape \(2, 10, 59\)"):
        mixer(x[..., :59])
    with pytest.raises(ValueError, match=rf"{cls}.step: argument `x_t` expected shape \(B, D\) with D=60"):
        mixer.step(x, mixer.init_state(2))
    _, state = mixer(x)
    with pytest.raises(ValueError, match=r"argument `state` has batch size 2 in `conv`, but the input has batch size 3"):
        mixer(randn(3, 10, D_MODEL, gen=gen), state)
    # same conv state shape, different ssm state shape
    other = Mamba(D_MODEL, d_state=4) if name == "mamba" else Mamba2(D_MODEL, d_state=16, headdim=20, ngroups=2)
    _, other_state = other(x)
    with pytest.raises(ValueError, match=r"argument `state` field `ssm` expected shape .*a state from a differently configured mixer"):
        mixer(x, other_state)
    wrong_type = Mamba2State(state.conv, state.ssm) if name == "mamba" else MambaState(state.conv, state.ssm)
    with pytest.raises(TypeError, match=rf"argument `state` must be a {cls}State"):
        mixer.step(x[:, 0], wrong_type)
