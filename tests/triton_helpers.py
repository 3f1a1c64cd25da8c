"""What the Triton kernel test files share: the device they run on and when they are skipped.

Without CUDA the kernels run in Triton's CPU interpreter, which ``conftest.py`` switches on
(``TRITON_INTERPRET=1``) before anything imports ``triton``. Importing this module skips the
importing test file when ``triton`` is not installed.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need the `triton` package")

from ssmkit.ops._triton import triton_unavailable_reason  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_REASON = triton_unavailable_reason(torch.device(DEVICE))
requires_triton = pytest.mark.skipif(_REASON is not None, reason=f"Triton kernels cannot run here: {_REASON}")


def assert_step_matches(got, ref, inputs: dict, dtype: torch.dtype) -> None:
    """A decode step's (y, new state, gradients) against the float64 ones: output in the input's
    dtype, state float32, each gradient in its input's dtype and within ``TOL[dtype]``."""
    from numerics import TOL, assert_close

    (y, s, g), (y_r, s_r, g_r) = got, ref
    assert y.dtype == dtype and s.dtype == torch.float32
    assert_close(y.cpu(), y_r, TOL[dtype], "output")
    assert_close(s.cpu(), s_r, TOL[dtype], "new state")
    for k in g:
        assert g[k].dtype == inputs[k].dtype
        assert_close(g[k].cpu(), g_r[k], TOL[dtype], f"gradient of `{k}`")


def assert_compiles_like_eager(f, args: tuple, tol: float = 1e-6) -> None:
    """f(*args) -> scalar traces into one graph (``torch.compile(fullgraph=True)``, fake kernels and
    autograd formulas) and its gradients match eager's within ``tol``."""
    from numerics import assert_close

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(*args)
    g = torch.autograd.grad(out, args)
    g_e = torch.autograd.grad(f(*args), args)
    for a, r in zip(g, g_e):
        assert_close(a, r, tol)


def spy_launches(monkeypatch, module, names, record) -> None:
    """Stand in for the Triton kernels ``names`` of ``module``: each launch ``kernel[grid](*args, **kw)``
    first calls ``record(name, kw)``, then launches the kernel."""

    class Spy:
        def __init__(self, name):
            self.name, self.kernel = name, getattr(module, name)

        def __getitem__(self, grid):
            def launch(*args, **kw):
                record(self.name, kw)
                return self.kernel[grid](*args, **kw)

            return launch

    for name in names:
        monkeypatch.setattr(module, name, Spy(name))


class OnTheGPU:
    """What the launch plans (``make_plan``) read of x, for a CUDA tensor of this shape and dtype: plans as
    a GPU makes them, without one (the device's properties are patched in or read as absent)."""

    def __init__(self, *shape, dtype=torch.bfloat16):
        self.shape, self.dtype, self.device = torch.Size(shape), dtype, torch.device("cuda")

    def element_size(self):
        return self.dtype.itemsize
