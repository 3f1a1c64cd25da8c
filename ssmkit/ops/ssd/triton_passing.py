"""SSD Triton stage 3: state passing across segments (forward and backward).

Segments of chunks (``triton_states.py``) are chained by a recurrence over
segments, not tokens, elementwise on the (P, N) state of each (row, head):

    forward:   h_in[s] = h_out[s-1],  h_out[s] = decay_s h_in[s] + S_s,  h_in[0] = 0
    backward:  g_out[s] = g_in[s+1],  g_in[s]  = decay_s g_out[s] + dS_s, g_out[last] = 0

The backward is the transpose of the forward (same decays, reversed order),
so one kernel serves both. ``decay_s`` is 0 for a segment in which a
sequence opens, which is what cuts the flow across sequence boundaries in
both directions; initial and final states enter inside the segment kernels.

The buffer is updated in place: segment contributions in, the state entering
(forward) or the gradient leaving (backward) each segment out.
"""

import triton
import triton.language as tl


@triton.jit
def _ssd_passing_kernel(
    states_ptr, decay_ptr, n_segs, H, PN,
    REVERSE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(P * N, BLOCK), batch * H).

    states: (B, n_segs, H, P*N) fp32, in place; decay: (B, n_segs, H) fp32.
    """
    pid_blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    head = pid_bh % H
    offs = pid_blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < PN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, n_segs):
        if REVERSE:
            s = n_segs - 1 - i
        else:
            s = i
        row = (b * n_segs + s) * H + head
        ptr = states_ptr + row * PN + offs
        contribution = tl.load(ptr, mask=mask, other=0.0)
        tl.store(ptr, acc, mask=mask)
        acc = tl.load(decay_ptr + row) * acc + contribution
