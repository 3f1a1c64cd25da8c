"""Packed variable-length sequences for the SSD backends that loop in Python.

``cu_seqlens`` = (0, l_0, l_0 + l_1, ..., T) cuts a batch of one packed
sequence x (1, T, H, P) into S sequences. Each runs from its own initial
state (row k of an (S, H, P, N) ``initial_state``, or zeros) and ends in its
own final state; no state crosses a boundary. The reference and the PyTorch
chunked path simply run each sequence alone (the Triton kernels reset the
state inside, see ``triton_cumsum.py``).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

Impl = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def per_sequence(impl: Impl) -> Impl:
    """Wrap an SSD backend ``impl(x, dt, A, B, C, D, z, dt_bias, dt_softplus,
    chunk_size, initial_state) -> (y, final)`` so that it accepts ``cu_seqlens``."""

    def run(x, dt, A, B, C, D, z, dt_bias, dt_softplus, chunk_size, initial_state, cu_seqlens=None):
        if cu_seqlens is None:
            return impl(x, dt, A, B, C, D, z, dt_bias, dt_softplus, chunk_size, initial_state)
        state_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        _, _, H, P = x.shape
        N = B.shape[3]
        bounds = cu_seqlens.tolist()
        ys, finals = [], []
        for k, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            h0: Optional[torch.Tensor] = None if initial_state is None else initial_state[k : k + 1]
            if e == s:  # an empty sequence: no output, its state unchanged
                ys.append(x[:, s:e])
                finals.append(x.new_zeros(1, H, P, N, dtype=state_dtype) if h0 is None else h0.to(state_dtype))
                continue
            cut = lambda t: None if t is None else t[:, s:e]  # noqa: E731
            y_k, f_k = impl(cut(x), cut(dt), A, cut(B), cut(C), D, cut(z), dt_bias, dt_softplus, chunk_size, h0)
            ys.append(y_k)
            finals.append(f_k)
        return torch.cat(ys, dim=1), torch.cat(finals, dim=0)  # (1, T, H, P), (S, H, P, N)

    return run
