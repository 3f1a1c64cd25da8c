"""Launchers of the selective scan Triton kernels: argument preparation, grids, configs.

Plain functions over tensors (no autograd); ``triton.py`` wraps them as
``torch.library`` custom ops. Shapes follow the op's contract (``reference.py``):
u, delta, z (B, L, D); A (D, N); B, C (B, L, N) or (B, L, G, N); D, delta_bias
(D,); states (B, D, N). The forward kernel takes A log2(e) and its initial and final
states transposed, (N, D) and (B, N, D), so that a warp's lanes read and write
consecutive channels (the launcher transposes); the backward's kernels read A (D, N)
and the states and their gradients in (B, D, N) as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from .._triton import LAUNCH, cdiv, f32, interpret_mode, next_pow2, register_cap, sm_count, unit_last
from .triton_bwd import selective_scan_bwd_kernel
from .triton_bwd_local import selective_scan_bwd_local_kernel
from .triton_bwd_sums import selective_scan_bwd_sums_kernel
from .triton_common import LOG2E
from .triton_fwd import selective_scan_fwd_kernel


@dataclass(frozen=True)
class ScanKernelConfig:
    """Tile sizes of the scan kernels (defaults from :func:`default_config`)."""

    block_d: int  # forward: channels per program (a warp holds 512 (channel, state) pairs)
    chunk: int  # forward: T, steps per register tile
    bwd_block_d: int  # backward: channels per program
    bwd_chunk: int  # backward: T, steps per register tile
    save_every: int  # S: the forward saves the state every S steps (a multiple of both chunks)
    dot_reduce: bool = False  # backward: sums over channels on the tensor cores (else lane shuffles)
    num_warps: int = 1
    bwd_num_warps: int = 1
    n_segs: int = 0  # forward: sequence segments run in parallel (two passes); 0: from the GPU's size
    bwd_n_segs: int = 0  # backward: the same
    dt_ahead: bool = True  # forward: Δ (softplus) computed one chunk ahead of the recurrence
    scatter: bool = True  # backward: ∂B, ∂C channel sums by a lane reduce-scatter (GPU, 32 channels per warp)
    # States whose Ā = exp2(Δ A) is computed on the FMA pipe rather than the special-function unit
    # (``triton_common._exp2_fma``): forward without checkpoints, forward saving them, backward.
    fma_exp: int = 0
    save_fma_exp: int = 0
    bwd_fma_exp: int = 0
    seg_programs_per_sm: int = 8  # forward, n_segs 0: segments for about this many programs per multiprocessor
    # forward: each segment's local pass runs as this many pieces in parallel; 0: pieces for about
    # ``local_programs_per_sm`` local programs per multiprocessor
    local_split: int = 0
    local_programs_per_sm: int = 12
    bwd_local_split: int = 0  # backward: the same for its local pass
    bwd_local_programs_per_sm: int = 80
    bwd_local_chunk: int = 0  # backward: T of its local pass; 0: 4 where the pieces are whole multiples of 4 steps
    # forward: lanes per channel, each holding N / lanes of its states (1, 2 or 4); the program's
    # threads cover block_d * lanes lanes
    lanes: int = 1
    share_td: bool = False  # forward, lanes = 2: each lane does the per-(t, d) work (softplus, gate) for half the steps
    maxnreg: int = 0  # forward: a cap on the registers per thread (``_triton.register_cap``); 0: none
    # bfloat16 inputs: the checkpoints in bfloat16 (else float32; float16 and float32 inputs always float32)
    half_checkpoints: bool = True

    def __post_init__(self) -> None:
        if self.save_every % self.bwd_chunk or (self.save_every % self.chunk and self.chunk % self.save_every):
            raise ValueError(f"ScanKernelConfig: save_every={self.save_every} must be a multiple of bwd_chunk, and a "
                             f"multiple or a divisor of chunk (chunk={self.chunk}, bwd_chunk={self.bwd_chunk})")
        if self.lanes not in (1, 2, 4):
            raise ValueError(f"ScanKernelConfig: lanes must be 1, 2 or 4, got {self.lanes}")
        if self.share_td and (self.lanes != 2 or self.chunk % 2):
            raise ValueError(f"ScanKernelConfig: share_td needs lanes=2 and an even chunk, got lanes={self.lanes}, "
                             f"chunk={self.chunk}")
        if self.bwd_local_chunk < 0 or self.bwd_local_chunk & (self.bwd_local_chunk - 1):
            raise ValueError(f"ScanKernelConfig: bwd_local_chunk must be 0 (automatic) or a power of two, got "
                             f"{self.bwd_local_chunk}")
        for name in ("local_split", "bwd_local_split"):
            if getattr(self, name) < 0:
                raise ValueError(f"ScanKernelConfig: {name} must be >= 0 (0: automatic), got {getattr(self, name)}")


def default_config(N: int, dtype: torch.dtype = torch.float32) -> ScanKernelConfig:
    """Tile sizes for N states and inputs of ``dtype``, chosen from the instruction counts of the compiled
    kernels (sm_90) and timings on an H200 (see docs/kernels_gpu_notes_scan.md)."""
    NP = next_pow2(N)
    block_d = max(1, 512 // NP)  # N <= 16: one channel and all its states per thread
    if NP == 16:
        # The forward with two warps per program (64 channels), Δ not computed a chunk ahead, every
        # exponential on the special-function unit and segments for ~16 programs per SM: on the H200 at
        # B=8 L=4096 D=2048 (``python3 benchmarks/gpu_scan.py --retune``) 0.847 ms against 0.897 for one
        # warp of 32 channels with half the exponentials on the FMA pipe (the earlier default), and 0.976
        # against 1.072 for the forward that saves checkpoints. The backward keeps one warp (3.34 against 3.42).
        # Segments for ~4 programs per SM (2 there), each segment's local pass in pieces for ~12 local programs
        # per SM (6 there): 0.704 ms against 0.802 with 8 segments whose local passes were not cut, 0.774
        # against 0.856 saving checkpoints (``python3 benchmarks/gpu_scan_split.py``).
        # bfloat16 checkpoints every 4 steps take the bytes of float32 ones every 8, and the backward then
        # recomputes two chunks of a span instead of four (no tile of four chunk-start states to spill): at
        # B=8 L=4096 D=2048 bf16 3.01 -> 2.53 ms (``python3 benchmarks/gpu_scan.py --checkpoints``).
        save_every = 4 if checkpoint_dtype(dtype) == torch.bfloat16 else 8
        return ScanKernelConfig(block_d=2 * block_d, chunk=4, bwd_block_d=block_d, bwd_chunk=2, save_every=save_every,
                                num_warps=2, dt_ahead=False, seg_programs_per_sm=4)  # fmt: skip
    return ScanKernelConfig(block_d=block_d, chunk=4, bwd_block_d=block_d, bwd_chunk=2, save_every=8)


# The forward takes two lanes per channel where batch x channels give at least this many warps per
# multiprocessor in one pass (``forward_config``).
LANES_WARPS_PER_SM = 6
# Registers of that forward on the H200 (Triton 3.6): 198 without checkpoints (4 programs of two warps per
# SM), 168 saving them (6). Capped at 168 where 4 programs per SM would not fit in one wave; in one wave at
# 204 without checkpoints and 184 saving them, where ptxas schedules the loop better than uncapped or at 168
# (B=8 L=4096 D=2048: 0.533 ms against 0.576 / 0.553, and 0.632 against 0.640 / 0.634;
# docs/kernels_gpu_notes_scan.md, twenty-seventh session).
LANES_MAXNREG = 168
LANES_UNCAPPED_PER_SM = 4
LANES_ONE_WAVE_MAXNREG = (204, 184)  # (without checkpoints, saving them)


def forward_config(N: int, batch: int, dim: int, device: torch.device, save_states: bool = False,
                   dtype: torch.dtype = torch.float32) -> ScanKernelConfig:  # fmt: skip
    """The forward's tiles for one call: :func:`default_config`, or for N = 16 where batch x channels fill the
    GPU without segments (~1.5 warps per scheduler or more), two lanes per channel with 8 states each, the
    per-(t, d) work shared between them, chunks of 8 steps and one pass: on the H200 at B=8 L=4096 D=2048
    (``python3 benchmarks/gpu_scan_lanes.py``) 0.579 ms against 0.704 (two segments, their local pass walking
    half the sequence again), 0.671 against 0.763 saving checkpoints (with the register cap); where the batch is
    small (B=2 D=4096: two segments needed) 0.818 against 0.798, so the default stays there. Registers are
    capped (``LANES_MAXNREG``) where 4 programs per SM would leave a second, partial wave (B=16 L=2048 D=1536:
    0.439 against 0.524 uncapped), and in one wave at ``LANES_ONE_WAVE_MAXNREG`` (B=8: 0.533 against 0.576
    uncapped and 0.553 at 168 without checkpoints). The checkpoints are the same (``save_every``: with
    checkpoints every 4 steps, two per chunk of 8), so the backward takes :func:`default_config` whatever this
    picks."""
    cfg = default_config(N, dtype)
    if next_pow2(N) == 16:
        wide = replace(cfg, lanes=2, share_td=True, chunk=8, block_d=32, num_warps=2, n_segs=1)
        programs = batch * cdiv(dim, wide.block_d)
        if device.type != "cuda":  # Triton's interpreter: the path of the GPU's larger shapes
            return wide
        sms = sm_count(device)
        if programs * wide.num_warps >= LANES_WARPS_PER_SM * sms:
            one_wave = programs <= LANES_UNCAPPED_PER_SM * sms
            return replace(wide, maxnreg=LANES_ONE_WAVE_MAXNREG[save_states] if one_wave else LANES_MAXNREG)
    return cfg


# The kernels' loops drop their element masks where every chunk, channel and state is in range (``WHOLE``):
# offline (sm_90) the two-lane forward's loop 673 -> 622 instructions (684 -> 639 saving checkpoints), the
# backward's checkpoint span 1990 -> 1849 with 336 -> 208 bytes of spills; on the H200 at B=8 L=4096 D=2048 the
# backward 3.25 -> 3.04 ms, the forward saving checkpoints 0.671 -> 0.653 (docs/kernels_gpu_notes_scan.md).
WHOLE_TILES = True


def local_chunk(cfg: ScanKernelConfig) -> int:
    """T of the backward's local pass: ``bwd_local_chunk``, or 4 where the pieces it walks (whole multiples of
    ``max(save_every, chunk)`` steps: ``segments``) are multiples of 4, else ``bwd_chunk``. Its loop has no
    tile of states to keep, so four steps per chunk fit: offline (sm_90, Triton 3.6) 123 registers and 7.3
    instructions per (step, state) against 8.1 at two steps (8.5 with element masks); on the H200 at B=8 L=4096
    D=2048 bf16 the pass took 0.210-0.211 ms against 0.214 (docs/kernels_gpu_notes_scan.md)."""
    if cfg.bwd_local_chunk:
        return cfg.bwd_local_chunk
    return 4 if max(cfg.save_every, cfg.chunk) % 4 == 0 else cfg.bwd_chunk


def _vector_checkpoints(N: int) -> bool:
    """Checkpoints written and read as (channels, N) tiles, 4 states per 128-bit access (N = NP)."""
    return N == next_pow2(N) and N >= 4


def _grouped(x: torch.Tensor) -> torch.Tensor:
    """(B, L, N) -> (B, L, 1, N); (B, L, G, N) unchanged; unit stride along N."""
    return unit_last(x.unsqueeze(2) if x.dim() == 3 else x)


def checkpoint_dtype(dtype: torch.dtype, half: bool = True) -> torch.dtype:
    """The checkpoints' dtype for inputs of ``dtype``: bfloat16 for bfloat16 inputs (with ``half``:
    ``ScanKernelConfig.half_checkpoints``), else float32. The backward recomputes each state from the checkpoint
    before it, in float32; rounding that starting state to bfloat16 is the precision the inputs already carry, and
    halves the checkpoints' bytes (docs/kernels_gpu_notes_scan.md, twenty-fourth session). float16 keeps float32:
    its range (65504) could not hold every state."""
    return torch.bfloat16 if half and dtype == torch.bfloat16 else torch.float32


def n_saves(L: int, cfg: ScanKernelConfig) -> int:
    return cdiv(L, cfg.save_every)


def segments(L: int, programs: int, n: int, single_pass_per_sm: float, per_sm: int, cfg: ScanKernelConfig,
             device: torch.device, split: int = 1) -> tuple[int, int]:  # fmt: skip
    """(number of segments, steps per segment) the sequence is split into.

    A program runs its channels' recurrence sequentially, so batch x channel blocks alone
    can leave the GPU with about one warp per scheduler (latency-bound). Segments of the
    sequence then run in parallel: a first pass gives each segment's end state from a zero
    start (or, backwards, the adjoint it sends back) and the second pass carries the true
    state across segments, at the price of one more exponential per element. ``n`` <= 0:
    one segment when there are ``single_pass_per_sm`` programs per multiprocessor, else about
    ``per_sm`` programs per multiprocessor (rounded: whole waves matter). Segment lengths
    are multiples of the larger of ``save_every`` and the forward's chunk, times ``split`` (the
    pieces a local pass cuts each into): whole chunks and whole checkpoint spans.
    """
    if n <= 0:
        sms = sm_count(device)
        n = 1 if programs >= single_pass_per_sm * sms else round(per_sm * sms / max(programs, 1))
        n = max(1, min(n, L // (4 * cfg.save_every)))
    S = max(cfg.save_every, cfg.chunk) * split
    seg_len = cdiv(cdiv(L, n), S) * S
    return cdiv(L, seg_len), seg_len


def _forward_split(L: int, programs: int, cfg: ScanKernelConfig, device: torch.device) -> tuple[int, int, int]:
    """(segments, steps per segment, local pieces per segment) of the forward. The full pass needs enough
    programs to hide its latencies; the local pass, which only has to cover the segments but the last, runs
    its own finer grid. Fewer segments mean less of the sequence walked twice (with 8 segments the local
    pass covered 7/8 of it: two exponentials per element where one would do)."""
    n = segments(L, programs, cfg.n_segs, 3, cfg.seg_programs_per_sm, cfg, device)[0]
    if cfg.n_segs <= 0 and n >= 8:  # the local pass covers 7/8 of the sequence or more anyway: take the
        n = segments(L, programs, 0, 3, 16, cfg, device)[0]  # parallelism (B=1 D=4096: 33 segments, not 8)
    return _cut(L, programs, n, cfg.local_split, cfg.local_programs_per_sm, cfg, device)


# The backward's main kernel holds this many of its one-warp programs per multiprocessor (255 registers of the
# 65536 a multiprocessor has, on every NVIDIA GPU since Volta).
BWD_RESIDENT_PER_SM = 8


def _backward_split(L: int, programs: int, cfg: ScanKernelConfig, device: torch.device) -> tuple[int, int, int]:
    """The same for the backward, whose main kernel is latency-bound at 255 registers and one warp per program:
    segments for whole waves of programs. Each segment but the first costs a local pass over it, so fewer segments
    are better as long as the programs fill the GPU, but a last wave that is only partly full costs a whole wave's
    time. The rule takes the fewest segments that fill k waves of ``BWD_RESIDENT_PER_SM`` programs per SM to at
    least k - 0.15, for k = 1, 2, ...: on the H200, bf16 checkpoints every 4 steps (``python3
    benchmarks/gpu_scan.py --backward-segments``), B=8 L=4096 D=2048 2 segments (0.97 waves) 2.36 ms against 2.44
    with 4 (1.94 waves), 2.48 with 8 (3.9 waves, the earlier rule of ~32 programs per SM) and 2.94 with 3 (1.45
    waves); B=16 L=2048 D=1536 4 segments (2.9 waves) 1.83 against 2.07 with 1 (0.73), 2.08 with 2 (1.45) and
    2.00 with 6 (4.4)."""
    n = cfg.bwd_n_segs
    if n <= 0:
        wave = BWD_RESIDENT_PER_SM * sm_count(device)
        n = next((k * wave // programs for k in range(1, 9) if programs * (k * wave // programs) >= (k - 0.15) * wave),
                 round(wave / programs))  # fmt: skip
        n = max(1, min(n, L // (4 * cfg.save_every)))
    return _cut(L, programs, n, cfg.bwd_local_split, cfg.bwd_local_programs_per_sm, cfg, device)


def _cut(L: int, programs: int, n: int, split: int, per_sm: int, cfg: ScanKernelConfig,
         device: torch.device) -> tuple[int, int, int]:  # fmt: skip
    """n segments (n >= 1) in ``split`` local pieces each (0: ``_pieces``): (segments, steps per segment, pieces),
    segment lengths multiples of a chunk and a checkpoint span x pieces (``segments``; rounding up can leave fewer
    segments)."""
    k = max(1, split) if n == 1 or split > 0 else _pieces(L, n, programs, per_sm, device)
    return (*segments(L, programs, n, 0, 0, cfg, device, k), k)  # (n > 0: the rule's arguments are unused)


def _pieces(L: int, n: int, programs: int, per_sm: int, device: torch.device) -> int:
    """Pieces per segment for a local pass of about ``per_sm`` programs per multiprocessor, with pieces
    of at least 64 steps, and at most one carried piece per 12 steps of a segment: the full pass walks the
    pieces of the segments before (forward) or after (backward) its own one by one, and on the H200 longer
    chains of them slowed the backward (8 segments of 512 steps: 3.22 ms in 6 pieces, 3.51 in 12)."""
    sms = sm_count(device)
    seg_len = cdiv(L, n)
    k = round(per_sm * sms / ((n - 1) * programs))
    return max(1, min(k, seg_len // 64, seg_len // (12 * (n - 1))))


def _common(u, delta, A, B, C, D, z, delta_bias, block_d: int):
    batch, L, dim = u.shape
    N = A.shape[1]
    Bg, Cg = _grouped(B), _grouped(C)
    G = Bg.shape[2]
    uniform = G == 1 or (dim // G) % block_d == 0
    return batch, L, dim, N, Bg, Cg, G, uniform


def scan_fwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    initial_state: Optional[torch.Tensor],
    delta_softplus: bool,
    save_states: bool,
    cfg: Optional[ScanKernelConfig] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward: y (B, L, D) in u's dtype, final state (B, D, N) float32 (a transposed view of the kernel's
    (B, N, D) buffer), and the saved states (B, n_saves, D, N) in ``checkpoint_dtype`` (an empty tensor unless
    ``save_states``)."""
    cfg = cfg or forward_config(A.shape[1], u.shape[0], u.shape[2], u.device, save_states, u.dtype)
    batch, L, dim, N, Bg, Cg, G, uniform = _common(u, delta, A, B, C, D, z, delta_bias, cfg.block_d)
    A2 = torch.empty((N, dim), dtype=torch.float32, device=u.device)  # A log2(e) as (N, D), in one launch
    torch.mul(A.detach().t().to(torch.float32), LOG2E, out=A2)
    u, delta = unit_last(u), unit_last(delta)
    z = None if z is None else unit_last(z)
    Dv, bias = f32(D), f32(delta_bias)
    h0 = None if initial_state is None else initial_state.detach().to(torch.float32).transpose(1, 2).contiguous()
    y = torch.empty((batch, L, dim), dtype=u.dtype, device=u.device)
    hlast = torch.empty((batch, N, dim), dtype=torch.float32, device=u.device)
    ns = n_saves(L, cfg) if save_states else 0
    hsave = torch.empty((batch, ns, dim, N), dtype=checkpoint_dtype(u.dtype, cfg.half_checkpoints), device=u.device)
    dummy = hlast  # stands in for absent optional pointers (never read)
    zz = z if z is not None else u
    nd = cdiv(dim, cfg.block_d)
    lanes = min(cfg.lanes, next_pow2(N))
    n_segs, seg_len, k = _forward_split(L, nd * batch, cfg, u.device)
    whole = WHOLE_TILES and L % cfg.chunk == 0 and dim % cfg.block_d == 0 and N == next_pow2(N)  # (segments and
    # pieces are whole chunks: ``segments``)
    # the local end states and Σ Δ of the k pieces of every segment but the last (which nothing reads)
    n_pieces = (n_segs - 1) * k
    hloc = torch.empty((batch, n_pieces, N, dim), dtype=torch.float32, device=u.device) if n_segs > 1 else dummy
    dts = torch.empty((batch, n_pieces, dim), dtype=torch.float32, device=u.device) if n_segs > 1 else dummy
    for local in ([True, False] if n_segs > 1 else [False]):
        selective_scan_fwd_kernel[(nd, batch, n_pieces if local else n_segs)](
            u, delta, zz, A2, Bg, Cg, Dv if Dv is not None else dummy, bias if bias is not None else dummy,
            h0 if h0 is not None else dummy, y, hlast, hsave if save_states else dummy, hloc, dts,
            L, dim, dim // G, ns, seg_len // k if local else seg_len, k, 1,
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
            y.stride(0), y.stride(1), Bg.stride(0), Bg.stride(1), Bg.stride(2), Cg.stride(0), Cg.stride(1),
            Cg.stride(2),
            N=N, NP=next_pow2(N), BLOCK_D=cfg.block_d, T=cfg.chunk, SAVE_K=max(1, cfg.save_every // cfg.chunk),
            SAVE_SUB=max(1, cfg.chunk // cfg.save_every),
            HAS_D=Dv is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(delta_softplus),
            HAS_H0=h0 is not None, SAVE_STATES=bool(save_states) and not local, GROUP_UNIFORM=uniform,
            FAST_MATH=not interpret_mode(), LOCAL=local, DT_AHEAD=cfg.dt_ahead,
            FMA_EXP=cfg.save_fma_exp if save_states else cfg.fma_exp, VEC_SAVE=_vector_checkpoints(N),
            LANES=lanes, SHARE_TD=cfg.share_td and lanes == 2, WHOLE=whole, num_warps=cfg.num_warps, **LAUNCH,
            **register_cap(cfg.maxnreg),
        )  # fmt: skip
    return y, hlast.transpose(1, 2), hsave  # (the final state as a view: a copy only where it is asked for)


def scan_bwd(
    dy: torch.Tensor,
    dhlast: Optional[torch.Tensor],
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    hsave: torch.Tensor,
    delta_softplus: bool,
    cfg: Optional[ScanKernelConfig] = None,
) -> tuple[torch.Tensor, ...]:
    """Backward from dy (B, L, D) and the final state's gradient dhlast (B, D, N) or None.

    Returns du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state, each in its
    input's dtype and shape (dD, dz, ddelta_bias: empty tensors when the input is absent;
    dinitial_state: (B, D, N) float32).
    """
    cfg = cfg or default_config(A.shape[1], u.dtype)
    batch, L, dim, N, Bg, Cg, G, uniform = _common(u, delta, A, B, C, D, z, delta_bias, cfg.bwd_block_d)
    Ac = A.detach().contiguous()  # (D, N): the backward's kernels form A log2(e) themselves
    u, delta, dy = unit_last(u), unit_last(delta), unit_last(dy)
    z = None if z is None else unit_last(z)
    Dv, bias = f32(D), f32(delta_bias)
    dev, fp32 = u.device, torch.float32
    du = torch.empty((batch, L, dim), dtype=u.dtype, device=dev)
    ddl = torch.empty((batch, L, dim), dtype=delta.dtype, device=dev)
    dz = torch.empty((batch, L, dim), dtype=z.dtype, device=dev) if z is not None else du.new_empty(0)
    if B.dtype == fp32 or C.dtype == fp32:  # (the float32 accumulators are returned as they are: two tensors)
        dB, dC = (torch.zeros((batch, L, G, N), dtype=fp32, device=dev) for _ in range(2))
        dBC = None
    else:  # one zero fill for both (the casts in ``_finish_sums`` make the gradients separate tensors)
        dBC = torch.zeros((2, batch, L, G, N), dtype=fp32, device=dev)
        dB, dC = dBC.unbind(0)
    nd = cdiv(dim, cfg.bwd_block_d)
    n_segs, seg_len, k = _backward_split(L, nd * batch, cfg, dev)
    dA = torch.empty((batch, n_segs, dim, N), dtype=fp32, device=dev)
    dh0 = torch.empty((batch, dim, N), dtype=fp32, device=dev)
    dD = torch.empty((batch, n_segs, dim), dtype=fp32, device=dev)
    dbias = torch.empty((batch, n_segs, dim), dtype=fp32, device=dev)
    dhl = None if dhlast is None else dhlast.detach().to(fp32).contiguous()  # (B, D, N)
    zz = z if z is not None else u
    qloc, dts = dh0, dD  # placeholders when there is one segment (never read)
    if n_segs > 1:
        # the local adjoints of the k pieces of segments 1.. (the first segment's reach no earlier segment)
        qloc = torch.empty((batch, (n_segs - 1) * k, N, dim), dtype=fp32, device=dev)
        dts = torch.empty((batch, (n_segs - 1) * k, dim), dtype=fp32, device=dev)
        TL = local_chunk(cfg)
        selective_scan_bwd_local_kernel[(nd, batch, (n_segs - 1) * k)](
            delta, zz, Ac, Cg, bias if bias is not None else dD, dy, qloc, dts,
            L, dim, dim // G, seg_len // k, k, 1, delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
            dy.stride(0), dy.stride(1), Cg.stride(0), Cg.stride(1), Cg.stride(2),
            N=N, NP=next_pow2(N), BLOCK_D=cfg.bwd_block_d, T=TL, HAS_Z=z is not None,
            HAS_BIAS=bias is not None, SOFTPLUS=bool(delta_softplus), GROUP_UNIFORM=uniform,
            FAST_MATH=not interpret_mode(), FMA_EXP=cfg.bwd_fma_exp, num_warps=cfg.bwd_num_warps,
            WHOLE=WHOLE_TILES and L % TL == 0 and max(cfg.save_every, cfg.chunk) % TL == 0
            and dim % cfg.bwd_block_d == 0 and N == next_pow2(N), **LAUNCH,
        )  # fmt: skip
    selective_scan_bwd_kernel[(nd, batch, n_segs)](
        u, delta, zz, Ac, Bg, Cg, Dv if Dv is not None else dD, bias if bias is not None else dD,
        hsave, dy, dhl if dhl is not None else dh0,
        du, ddl, dz if z is not None else du, dB, dC, dA, dD, dbias, dh0, qloc, dts,
        L, dim, dim // G, hsave.shape[1], seg_len, k, 1,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
        dy.stride(0), dy.stride(1), Bg.stride(0), Bg.stride(1), Bg.stride(2), Cg.stride(0), Cg.stride(1),
        Cg.stride(2), dB.stride(0), dB.stride(1),
        N=N, NP=next_pow2(N), BLOCK_D=cfg.bwd_block_d, T=cfg.bwd_chunk, K=cfg.save_every // cfg.bwd_chunk,
        HAS_D=Dv is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(delta_softplus),
        HAS_DHLAST=dhl is not None, GROUP_UNIFORM=uniform, FAST_MATH=not interpret_mode(),
        DOT_REDUCE=cfg.dot_reduce and cfg.bwd_block_d >= 16 and cfg.bwd_chunk * next_pow2(N) >= 16,
        SCATTER=cfg.scatter and not cfg.dot_reduce and not interpret_mode() and cfg.bwd_block_d == 32 * cfg.bwd_num_warps,
        FMA_EXP=cfg.bwd_fma_exp, VEC_SAVE=_vector_checkpoints(N), num_warps=cfg.bwd_num_warps,
        WHOLE=WHOLE_TILES and L % cfg.save_every == 0 and dim % cfg.bwd_block_d == 0 and N == next_pow2(N), **LAUNCH,
    )  # fmt: skip
    dA, dB, dC, dD, dbias = _finish_sums(dBC, dB, dC, dA, dD, dbias, A, B, C, D, delta_bias)
    return du, ddl, dA, dB, dC, dD, dz, dbias, dh0


# The last launch's tiles: elements per program of the dB / dC casts, and columns per program of the sums.
SUMS_BLOCK, SUMS_BLOCK_R = 4096, 512


def _finish_sums(dBC, dB, dC, dA, dD, dbias, A, B, C, D, delta_bias) -> tuple:
    """dA, dB, dC, dD, ddelta_bias in their inputs' dtypes and shapes (empty where absent) from the main
    kernel's float32 buffers: dBC (2, B, L, G, N) holding dB and dC for 16-bit B and C (else None, and dB, dC
    (B, L, G, N) are returned as they are, cast where only one of B, C is float32); the partials dA
    (B, n_segs, D, N), dD and dbias (B, n_segs, D). One launch: ``selective_scan_bwd_sums_kernel``."""
    rows, dim, N = dA.shape[0] * dA.shape[1], dA.shape[2], dA.shape[3]
    dev = dA.device
    dAo = torch.empty((dim, N), dtype=A.dtype, device=dev)
    dDo = torch.empty((dim,), dtype=D.dtype, device=dev) if D is not None else dD.new_empty(0)
    dbo = torch.empty((dim,), dtype=delta_bias.dtype, device=dev) if delta_bias is not None else dbias.new_empty(0)
    if dBC is not None:
        dB, dC = torch.empty(B.shape, dtype=B.dtype, device=dev), torch.empty(C.shape, dtype=C.dtype, device=dev)
    M = dB.numel() if dBC is not None else 0
    n_cast, n_a, n_d = cdiv(M, SUMS_BLOCK), cdiv(dim * N, SUMS_BLOCK_R), cdiv(dim, SUMS_BLOCK_R)
    grid = 2 * n_cast + n_a + n_d * ((D is not None) + (delta_bias is not None))
    selective_scan_bwd_sums_kernel[(grid,)](
        dBC if dBC is not None else dA, dB, dC, dA, dAo, dD, dDo if D is not None else dD,
        dbias, dbo if delta_bias is not None else dbias, M, dim * N, dim, rows, n_cast, n_a, n_d,
        HAS_D=D is not None, HAS_BIAS=delta_bias is not None, BLOCK=SUMS_BLOCK, BLOCK_R=SUMS_BLOCK_R, **LAUNCH,
    )  # fmt: skip
    return dAo, dB.to(B.dtype).reshape(B.shape), dC.to(C.dtype).reshape(C.shape), dDo, dbo
