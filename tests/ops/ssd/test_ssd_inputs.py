"""SSD: every bad input is rejected with an error naming the argument, expectation and value."""

from __future__ import annotations

import pytest
import torch

from numerics import randn
from ssmkit.ops.ssd import ssd, ssd_step

b, L, H, P, N, G = 2, 9, 6, 5, 7, 3


def seq_inputs(gen) -> dict:
    return dict(
        x=randn(b, L, H, P, gen=gen), dt=randn(b, L, H, gen=gen), A=-randn(H, gen=gen).abs(),
        B=randn(b, L, G, N, gen=gen), C=randn(b, L, G, N, gen=gen), D=randn(H, gen=gen),
        z=randn(b, L, H, P, gen=gen), dt_bias=randn(H, gen=gen), initial_state=randn(b, H, P, N, gen=gen),
    )  # fmt: skip


def step_inputs(gen) -> dict:
    return dict(
        state=randn(b, H, P, N, gen=gen), x=randn(b, H, P, gen=gen), dt=randn(b, H, gen=gen),
        A=-randn(H, gen=gen).abs(), B=randn(b, G, N, gen=gen), C=randn(b, G, N, gen=gen),
        D=randn(H, P, gen=gen), z=randn(b, H, P, gen=gen), dt_bias=randn(H, gen=gen),
    )  # fmt: skip


def test_valid_inputs_pass(gen):
    """The baseline of every case below runs (so each error is caused by its one change)."""
    assert ssd(**seq_inputs(gen), dt_softplus=True).shape == (b, L, H, P)
    assert ssd_step(**step_inputs(gen), dt_softplus=True)[0].shape == (b, H, P)


SSD_CASES = [
    # (name, change to the valid inputs, exception, message pattern)
    ("x 3-D", lambda d: d.update(x=d["x"][..., 0]), ValueError, r"`x` expected shape \(B, L, H, P\), got \(2, 9, 6\)"),
    ("dt wrong L", lambda d: d.update(dt=d["dt"][:, :4]), ValueError, r"`dt` expected shape \(B=2, L=9, H=6\), got \(2, 4, 6\)"),
    ("dt channels-first", lambda d: d.update(dt=d["dt"].transpose(1, 2)), ValueError, r"`dt` expected shape .* got \(2, 6, 9\)"),
    ("A per state (Mamba-1 layout)", lambda d: d.update(A=torch.ones(H, N)), ValueError, r"`A` expected shape \(H=6\), got \(6, 7\)"),
    ("B ungrouped", lambda d: d.update(B=d["B"][:, :, 0]), ValueError, r"`B` expected shape \(B=2, L=9, G, N\), got \(2, 9, 7\)"),
    ("C N differs from B", lambda d: d.update(C=d["C"][..., :4]), ValueError, r"`C` expected shape \(B=2, L=9, G=3, N=7\)"),
    ("G does not divide H", lambda d: d.update(B=d["B"][:, :, :1].repeat(1, 1, 4, 1), C=d["C"][:, :, :1].repeat(1, 1, 4, 1)),
     ValueError, r"`H \(heads, x.shape\[2\]\)`=6 must be divisible by `G \(groups, B.shape\[2\]\)`=4"),
    ("D per state", lambda d: d.update(D=torch.ones(N)), ValueError, r"`D` expected shape \(H=6\) or \(H=6, P=5\), got \(7,\)"),
    ("z wrong P", lambda d: d.update(z=d["z"][..., :2]), ValueError, r"`z` expected shape \(B=2, L=9, H=6, P=5\)"),
    ("dt_bias wrong H", lambda d: d.update(dt_bias=torch.ones(H + 1)), ValueError, r"`dt_bias` expected shape \(H=6\), got \(7,\)"),
    ("state (P, N) swapped", lambda d: d.update(initial_state=d["initial_state"].transpose(2, 3)),
     ValueError, r"`initial_state` expected shape \(B=2, H=6, P=5, N=7\), got \(2, 6, 7, 5\)"),
    ("x integer", lambda d: d.update(x=d["x"].long()), TypeError, r"`x` must have dtype in \(.*float32.*\), got int64"),
    ("A integer", lambda d: d.update(A=torch.ones(H, dtype=torch.int32)), TypeError, r"`A` must have dtype .* got int32"),
    ("x not a tensor", lambda d: d.update(x=d["x"].tolist()), TypeError, r"`x` must be a torch.Tensor, got list"),
    ("A on another device", lambda d: d.update(A=d["A"].to("meta")), ValueError, r"`A` is on meta, expected the device of `x` \(cpu\)"),
    ("chunk_size 0", lambda d: d.update(chunk_size=0), ValueError, r"`chunk_size` must be >= 1, got 0"),
    ("chunk_size float", lambda d: d.update(chunk_size=16.0), TypeError, r"`chunk_size` must be an int, got float"),
    ("chunk_size bool", lambda d: d.update(chunk_size=True), TypeError, r"`chunk_size` must be an int, got bool"),
    ("backend unknown", lambda d: d.update(backend="cuda"), ValueError, r"`backend` must be one of \[.*'torch'.*\], got 'cuda'"),
    ("dt_softplus not bool", lambda d: d.update(dt_softplus="yes"), TypeError, r"`dt_softplus` must be a bool, got str"),
    ("return_final_state not bool", lambda d: d.update(return_final_state=1), TypeError, r"`return_final_state` must be a bool, got int"),
]  # fmt: skip


@pytest.mark.parametrize("name, change, exc, match", SSD_CASES, ids=[c[0] for c in SSD_CASES])
def test_ssd_rejects(gen, name, change, exc, match):
    kwargs = seq_inputs(gen)
    change(kwargs)
    with pytest.raises(exc, match=r"^ssd: .*" + match):
        ssd(**kwargs)


STEP_CASES = [
    ("x with a time axis", lambda d: d.update(x=d["x"][:, None]), ValueError, r"`x` expected shape \(B, H, P\), got \(2, 1, 6, 5\)"),
    ("dt wrong H", lambda d: d.update(dt=d["dt"][:, :2]), ValueError, r"`dt` expected shape \(B=2, H=6\), got \(2, 2\)"),
    ("B with a time axis", lambda d: d.update(B=d["B"][:, None]), ValueError, r"`B` expected shape \(B=2, G, N\)"),
    ("C wrong G", lambda d: d.update(C=d["C"][:, :1]), ValueError, r"`C` expected shape \(B=2, G=3, N=7\)"),
    ("state wrong N", lambda d: d.update(state=d["state"][..., :3]), ValueError, r"`state` expected shape \(B=2, H=6, P=5, N=7\)"),
    ("z wrong P", lambda d: d.update(z=d["z"][..., :1]), ValueError, r"`z` expected shape \(B=2, H=6, P=5\)"),
    ("D wrong P", lambda d: d.update(D=d["D"][:, :1]), ValueError, r"`D` expected shape \(H=6\) or \(H=6, P=5\)"),
    ("G does not divide H", lambda d: d.update(B=d["B"][:, :1].repeat(1, 4, 1), C=d["C"][:, :1].repeat(1, 4, 1)),
     ValueError, r"=6 must be divisible by `G \(groups, B.shape\[2\]\)`=4"),
    ("state integer", lambda d: d.update(state=d["state"].int()), TypeError, r"`state` must have dtype .* got int32"),
    ("dt_bias on another device", lambda d: d.update(dt_bias=d["dt_bias"].to("meta")), ValueError, r"`dt_bias` is on meta"),
    ("dt_softplus not bool", lambda d: d.update(dt_softplus=None), TypeError, r"`dt_softplus` must be a bool, got NoneType"),
]  # fmt: skip


@pytest.mark.parametrize("name, change, exc, match", STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_ssd_step_rejects(gen, name, change, exc, match):
    kwargs = step_inputs(gen)
    change(kwargs)
    with pytest.raises(exc, match=r"^ssd_step: .*" + match):
        ssd_step(**kwargs)
