"""The Cauchy sums of the S4 kernel, in frequency chunks, with a hand-written backward.

    s[d, k, f] = sum_i num[d, k, i] / den[d, i, f],   den = a_d (1 - z_f) - lambda_{d,i} (1 + z_f)

(a = 2/Delta, z_f the roots of unity; see ``kernel.py``). The (D, 2M, F) Cauchy matrix 1/den
is never held whole: the forward builds it chunk by chunk, and the backward rebuilds each chunk
instead of saving it, so memory is O(CAUCHY_CHUNK) instead of O(D M L) (S4 uses a custom
Cauchy kernel for the same reason). s is holomorphic in (num, lambda, a), so with PyTorch's
convention the backward is grad * conj(ds/dx):
    ds/dnum = 1/den,  ds/dlambda = num (1 + z)/den^2,  ds/da = -num (1 - z)/den^2.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

CAUCHY_CHUNK = 1 << 22  # (D, 2M, F) entries of the Cauchy matrix held at once


def _inv_den(lam: torch.Tensor, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """1 / den: (D, n, f) for lam (D, n), a (D,), z (f,)."""
    return 1 / (a[:, None, None] * (1 - z) - lam[..., None] * (1 + z))


class _CauchySums(torch.autograd.Function):
    @staticmethod
    def forward(ctx, num: torch.Tensor, lam: torch.Tensor, a: torch.Tensor, z: torch.Tensor, step: int) -> torch.Tensor:
        ctx.save_for_backward(num, lam, a, z)
        ctx.step = step
        parts = [
            torch.einsum("dkn,dnf->dkf", num, _inv_den(lam, a, z[f0 : f0 + step])) for f0 in range(0, z.shape[0], step)
        ]
        return torch.cat(parts, dim=-1)  # (D, K, F)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        num, lam, a, z = ctx.saved_tensors
        need_num, need_lam, need_a = ctx.needs_input_grad[:3]
        g_num = torch.zeros_like(num) if need_num else None
        g_lam = torch.zeros_like(lam) if need_lam else None
        g_a = torch.zeros_like(a) if need_a else None
        step = ctx.step
        for f0 in range(0, z.shape[0], step):
            zc, gc = z[f0 : f0 + step], grad[..., f0 : f0 + step]  # (f,), (D, K, f)
            inv_c = _inv_den(lam, a, zc).conj()  # (D, n, f)
            if need_num:
                g_num += torch.einsum("dkf,dnf->dkn", gc, inv_c)
            if need_lam or need_a:
                w = torch.einsum("dkf,dkn->dnf", gc, num.conj()) * inv_c.square()  # (D, n, f)
                if need_lam:
                    g_lam += (w * (1 + zc).conj()).sum(-1)
                if need_a:
                    g_a -= (w * (1 - zc).conj()).sum((-1, -2))
        return g_num, g_lam, g_a, None, None


def cauchy_sums(num: torch.Tensor, lam: torch.Tensor, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """s[d, k, f] = sum_i num[d, k, i] / (a[d] (1 - z[f]) - lam[d, i] (1 + z[f])).

    Args:
        num: (D, K, n) complex;  lam: (D, n) complex;  a: (D,) complex;  z: (F,) complex.
    Returns:
        s: (D, K, F) complex, differentiable in num, lam and a.
    """
    step = max(1, CAUCHY_CHUNK // (lam.shape[0] * lam.shape[1]))
    return _CauchySums.apply(num, lam, a, z, step)
