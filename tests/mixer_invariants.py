"""The DESIGN.md invariants, as reusable checks for any Mixer.

Each check takes a built mixer (float32 unless stated) and a fresh random
input, and asserts; the per-layer test files call them with their own
configurations. A mixer selects its op implementation through its
``backend`` attribute ("reference", "torch", "c", "triton", "auto").
"""

from __future__ import annotations

import copy

import torch

from numerics import TOL, assert_close, rel_err


def _states_close(a, b, tol, what):
    assert type(a) is type(b), f"{what}: state types differ: {type(a).__name__} vs {type(b).__name__}"
    if a is None:  # bidirectional layers return no state
        return
    for (name, ta), (_, tb) in zip(a.tensors(), b.tensors()):
        if ta.is_floating_point():
            assert_close(ta, tb, tol, f"{what}: state field `{name}`")
        else:
            assert torch.equal(ta, tb), f"{what}: state field `{name}` differs"


@torch.no_grad()
def check_step_matches_forward(mixer, x, tol=TOL[torch.float32]):
    """Invariant 2: `step` token by token equals `forward` on the whole sequence."""
    y_full, s_full = mixer(x)
    state = mixer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        ys.append(y_t)
    assert_close(torch.stack(ys, 1), y_full, tol, "step vs forward: output")
    _states_close(state, s_full, tol, "step vs forward")


@torch.no_grad()
def check_split_matches_whole(mixer, x, k, tol=TOL[torch.float32]):
    """Invariant 3: forward(x[:, :k]) then forward(x[:, k:], state) equals forward(x)."""
    y_full, s_full = mixer(x)
    y1, s1 = mixer(x[:, :k])
    y2, s2 = mixer(x[:, k:], s1)
    assert_close(torch.cat([y1, y2], 1), y_full, tol, f"split at {k} vs whole: output")
    _states_close(s2, s_full, tol, f"split at {k} vs whole")


@torch.no_grad()
def check_causal(mixer, x, t, gen):
    """Invariant 4: changing inputs after position t leaves outputs up to t unchanged."""
    y, _ = mixer(x)
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randn(x2[:, t + 1 :].shape, generator=gen).to(x.dtype)
    y2, _ = mixer(x2)
    assert torch.allclose(y[:, : t + 1], y2[:, : t + 1], rtol=1e-5, atol=1e-6), "output before t changed"
    assert not torch.allclose(y[:, t + 1 :], y2[:, t + 1 :]), "output after t did not change: the check is vacuous"


@torch.no_grad()
def check_batch_independent(mixer, x, gen):
    """Invariant 5: sample i's output does not depend on sample j."""
    y, _ = mixer(x)
    x2 = x.clone()
    x2[1:] = torch.randn(x2[1:].shape, generator=gen).to(x.dtype)
    y2, _ = mixer(x2)
    assert torch.allclose(y[0], y2[0], rtol=1e-5, atol=1e-6), "sample 0 changed when other samples changed"
    y0, _ = mixer(x[:1])
    assert torch.allclose(y[:1], y0, rtol=1e-4, atol=1e-5), "sample 0 differs when run alone"


def check_backend_matches_reference(mixer, x, backend, dtype=torch.float32, tol=None, grad_tol=None):
    """Invariant 1: `backend` equals the float64 reference: output, final state, every gradient.

    The reference is a float64 copy of ``mixer`` with backend "reference"; the
    fast copy runs in ``dtype`` (its parameters stay as the module keeps them).
    """
    tol = tol if tol is not None else TOL[dtype]
    grad_tol = grad_tol if grad_tol is not None else tol * 3
    ref = copy.deepcopy(mixer).double()
    ref.backend = "reference"
    fast = copy.deepcopy(mixer)
    fast.backend = backend
    if dtype != torch.float32:
        fast = fast.to(dtype)
    x_ref = x.detach().double().requires_grad_(True)
    x_fast = x.detach().to(dtype).requires_grad_(True)
    y_ref, s_ref = ref(x_ref)
    y_fast, s_fast = fast(x_fast)
    assert_close(y_fast, y_ref, tol, f"{backend} vs reference: output")
    _states_close(s_fast, s_ref, tol, f"{backend} vs reference")
    g = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    (y_ref * g).sum().backward()
    (y_fast * g.to(dtype)).sum().backward()
    assert_close(x_fast.grad, x_ref.grad, grad_tol, f"{backend} vs reference: grad of input")
    ref_params = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        if p.grad is None and ref_params[name].grad is None:
            continue
        assert p.grad is not None, f"{backend}: parameter `{name}` got no gradient"
        if ref_params[name].grad.norm() == 0:
            assert p.grad.norm() <= 1e-6, f"{backend}: grad of `{name}` should be zero"
            continue
        assert_close(p.grad, ref_params[name].grad, grad_tol, f"{backend} vs reference: grad of `{name}`")
    return rel_err(y_fast, y_ref)
