"""SSD "triton" backend: the kernels against the float64 loop, packed sequences, compile.

On a machine without a GPU the kernels run in Triton's CPU interpreter
(``TRITON_INTERPRET=1``, set by a module fixture for this file only), on
small odd shapes; on a GPU the same tests run there, and two more run the
full-shape and L = 2^20 checks of ``benchmarks/gpu_ssd_checks.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import sys

import pytest
import torch

from numerics import TOL, assert_close, projection_weights, randn
from ssmkit.ops.backends import BackendUnavailableError
from ssmkit.ops.ssd import SSD_BACKENDS, ssd, ssd_reference

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed: the Triton SSD kernels cannot run", allow_module_level=True)

from triton_helpers import OnTheGPU, spy_launches  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")


@pytest.fixture(scope="module", autouse=True)
def _interpreter():
    """On CPU the kernels need Triton's interpreter, switched on before Triton was
    first imported (``tests/conftest.py`` does it when there is no CUDA)."""
    if not CUDA:
        import triton.language.standard as standard

        if os.environ.get("TRITON_INTERPRET") != "1" or "Interpreted" not in type(standard.sum).__name__:
            pytest.skip("no CUDA, and Triton was imported before TRITON_INTERPRET=1 was set")


def make_inputs(gen, *, b=2, L=37, H=4, P=8, N=16, G=2, dtype=torch.float32, D_shape="H", softplus=True,
                strong_decay=False, n_states=None) -> dict:  # fmt: skip
    """Fresh random inputs: activations in `dtype`, A, D, dt_bias in fp32."""
    dt_bias = randn(H, gen=gen, scale=0.5) - 1
    if strong_decay:  # dt |A| up to ~160 per step: chunk log decays near -1e4
        dt = (5 + 15 * torch.rand(b, L, H, generator=gen, dtype=torch.float64)).to(dtype)
        A = -torch.exp(torch.linspace(-7.0, 2.0, H, dtype=torch.float64)).float()
    elif softplus:
        dt, A = randn(b, L, H, gen=gen, dtype=dtype), -torch.exp(randn(H, gen=gen))
    else:  # Δ = dt + dt_bias itself must be positive
        dt, A = torch.exp(randn(b, L, H, gen=gen, scale=0.5) - 1).to(dtype), -torch.exp(randn(H, gen=gen))
        dt_bias = 0.1 * torch.rand(H, generator=gen)
    return dict(
        x=randn(b, L, H, P, gen=gen, dtype=dtype), dt=dt, A=A,
        B=randn(b, L, G, N, gen=gen, dtype=dtype), C=randn(b, L, G, N, gen=gen, dtype=dtype),
        D=randn(*((H,) if D_shape == "H" else (H, P)), gen=gen), z=randn(b, L, H, P, gen=gen, dtype=dtype),
        dt_bias=dt_bias, initial_state=randn(n_states or b, H, P, N, gen=gen),
    )  # fmt: skip


def run(fn, inp: dict, gen, **kw):
    """y, final state and the gradients of a random projection of both."""
    leaves = {k: v.detach().to(DEV).requires_grad_(True) for k, v in inp.items() if v is not None}
    y, s = fn(**leaves, return_final_state=True, **kw)
    wy = projection_weights(y.shape, gen, DEV)
    ws = projection_weights(s.shape, gen, DEV)
    ((y.double() * wy).sum() + (s.double() * ws).sum()).backward()
    return y, s, {k: v.grad for k, v in leaves.items()}


def triton_with(seg_chunks: int, bwd_span: int = -1, fwd_span: int = -1):
    """The triton backend with a given segment length and backward / forward spans, called like ``ssd``."""
    from ssmkit.ops.ssd.triton import ssd_triton

    def f(return_final_state=True, **kw):
        return ssd_triton(**kw, seg_chunks=seg_chunks, bwd_span=bwd_span, fwd_span=fwd_span)

    return f


def assert_all_close(got, ref, dtype, names):
    (y, s, g), (y_r, s_r, g_r) = got, ref
    assert y.dtype == dtype and s.dtype == torch.float32
    assert_close(y, y_r, TOL[dtype], "y")
    assert_close(s, s_r, TOL[dtype], "final state")
    assert set(g) == set(names)
    for name in names:
        assert g[name].dtype == g_r[name].dtype or g_r[name].dtype == torch.float64
        assert_close(g[name], g_r[name], TOL[dtype], f"grad {name}")


CASES = [  # dtype, L, P, chunk, G, D shape, softplus, seg_chunks (0: default plan), bwd_span, fwd_span (-1: default)
    (torch.float32, 37, 40, 16, 2, "HP", True, 2, -1, -1),  # several segments; fp32 splits P in the backward
    (torch.float32, 37, 40, 16, 2, "HP", True, 2, 0, 0),  # both walk the segments (carried state and gradient)
    (torch.bfloat16, 33, 8, 16, 1, "H", True, 1, 0, -1),
    (torch.bfloat16, 33, 8, 16, 1, "H", True, 1, 1, 0),  # one chunk per backward program; the forward walks
    (torch.float16, 29, 8, 32, 4, "H", True, 0, -1, -1),  # L < chunk
    (torch.float32, 23, 8, 7, 2, "H", False, 2, 3, 2),  # odd chunk size; spans that cut segments
    (torch.bfloat16, 70, 8, 48, 2, "H", True, 0, -1, -1),  # chunk > 32: dy·Y_off by its own product (plan)
    (torch.bfloat16, 21, 72, 16, 2, "HP", True, 0, -1, -1),  # 16-bit P > 64: backward P blocks of 64, one masked
]


def check_case(gen, dtype, L, P, chunk, G, D_shape, softplus, seg, span, fwd_span):
    """One of ``CASES``: output, final state and every gradient against the float64 loop."""
    inp = make_inputs(gen, L=L, P=P, G=G, dtype=dtype, D_shape=D_shape, softplus=softplus)
    seed = int(torch.randint(2**62, (1,), generator=gen))
    got = run(triton_with(seg, span, fwd_span), inp, torch.Generator().manual_seed(seed), dt_softplus=softplus, chunk_size=chunk)
    ref = run(ssd_reference, {k: v.double() for k, v in inp.items()}, torch.Generator().manual_seed(seed),
              dt_softplus=softplus)  # fmt: skip
    assert_all_close(got, ref, dtype, GRAD_NAMES)


@pytest.mark.parametrize("dtype, L, P, chunk, G, D_shape, softplus, seg, span, fwd_span", CASES)
def test_matches_reference(gen, dtype, L, P, chunk, G, D_shape, softplus, seg, span, fwd_span):
    """Output, final state and every gradient against the float64 loop."""
    check_case(gen, dtype, L, P, chunk, G, D_shape, softplus, seg, span, fwd_span)


FORM_CASES = [  # the walking scan's state update, the walking and chunk-parallel backward, chunks over 32,
    CASES[1], CASES[3], CASES[6], (torch.float32, 37, 40, 16, 2, "HP", True, 0, -1, -1)]  # and the head loop


@pytest.mark.parametrize("form", ["triton 3.0-3.2", "tensor memory"])
@pytest.mark.parametrize("dtype, L, P, chunk, G, D_shape, softplus, seg, span, fwd_span", FORM_CASES)
def test_kernel_forms(gen, monkeypatch, form, dtype, L, P, chunk, G, D_shape, softplus, seg, span, fwd_span):
    """The forms of Hopper with Triton 3.0-3.2 (``triton_forms.py``: B^T loaded as its own tile, <g, h>
    elementwise, sums axis by axis, the 16-bit backward at 4 warps) and of GPUs with tensor memory (whole-tile
    sums) give the same output, final state and gradients against the float64 loop."""
    from ssmkit.ops.ssd import triton_forms
    from ssmkit.ops.ssd.triton_launch import make_plan

    monkeypatch.delenv("SSMKIT_SSD_OLD_TRITON_FORMS", raising=False)
    version = triton_forms.triton_version()
    assert triton_forms.kernel_forms(9) == (triton_forms.OLD_TRITON if version < (3, 3) else triton_forms.PLAIN)
    assert triton_forms.kernel_forms(10) == triton_forms.TENSOR_MEMORY and triton_forms.kernel_forms(8) == triton_forms.PLAIN
    x = torch.empty(2, 256, 8, 64, dtype=torch.bfloat16)
    assert make_plan(x, 128, 64, None, bwd_span=1).bwd_warps == 8
    forms = triton_forms.OLD_TRITON if form == "triton 3.0-3.2" else triton_forms.TENSOR_MEMORY
    monkeypatch.setattr(triton_forms, "kernel_forms", lambda major: forms)  # (what the launchers and plans ask)
    assert make_plan(x, 128, 64, None, bwd_span=1).bwd_warps == (4 if forms == triton_forms.OLD_TRITON else 8)
    check_case(gen, dtype, L, P, chunk, G, D_shape, softplus, seg, span, fwd_span)


@pytest.mark.parametrize("reduce, heads_inner", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("dtype, P, G", [(torch.float32, 12, 2), (torch.bfloat16, 72, 1)])
def test_head_sums(gen, monkeypatch, reduce, heads_inner, dtype, P, G):
    """dB and dC summed over each group's heads (and P blocks) by the fused backward's last program of every
    chunk (``REDUCE_HEADS``, with the heads of a chunk launched together) or by a separate sum; bf16 with
    P = 72 has two P blocks, one masked. Against the float64 loop, with the kernel's flag checked."""
    from ssmkit.ops.ssd import triton_launch

    monkeypatch.setattr(triton_launch, "REDUCE_HEADS", reduce)
    monkeypatch.setattr(triton_launch, "HEADS_INNER", heads_inner)
    monkeypatch.setattr(triton_launch, "HEAD_LOOP", False)  # (one program per chunk and head)
    flags = []
    spy_launches(monkeypatch, triton_launch, ["_ssd_bwd_kernel"],
                 lambda name, kw: flags.append((kw["REDUCE_HEADS"], kw["HEADS_INNER"])))  # fmt: skip
    inp = make_inputs(gen, L=45, P=P, G=G, dtype=dtype)
    seed = int(torch.randint(2**62, (1,), generator=gen))
    got = run(triton_with(0, 1), inp, torch.Generator().manual_seed(seed), dt_softplus=True, chunk_size=16)
    ref = run(ssd_reference, {k: v.double() for k, v in inp.items()}, torch.Generator().manual_seed(seed),
              dt_softplus=True)  # fmt: skip
    assert_all_close(got, ref, dtype, GRAD_NAMES)
    assert flags == [(reduce and heads_inner, heads_inner)]


@pytest.mark.parametrize("dtype, P, G, packed", [(torch.float32, 12, 2, False), (torch.bfloat16, 72, 1, False),
                                                  (torch.float32, 8, 1, True)])  # fmt: skip
def test_head_loop_and_one_head_per_program(gen, monkeypatch, dtype, P, G, packed):
    """The chunk-parallel backward with one program per (chunk, group) walking its heads (``HEAD_LOOP``, the
    plan's pick for fp32) and with one program per (chunk, head) (its pick for 16-bit inputs), each forced:
    both against the float64 loop, and in float32 against each other to rounding (the heads' dB, dC summed in
    registers or as shares afterwards). bf16 with P = 72 has two P blocks, one masked (partial sums added
    afterwards); packed sequences read the chunk table. The kernel that ran is checked."""
    from ssmkit.ops.ssd import triton as ssd_triton_module
    from ssmkit.ops.ssd import triton_launch

    make_plan, ran = ssd_triton_module.make_plan, []
    spy_launches(monkeypatch, triton_launch, ["_ssd_bwd_heads_kernel", "_ssd_bwd_kernel"],
                 lambda name, kw: ran.append("heads" if name == "_ssd_bwd_heads_kernel" else "one"))  # fmt: skip
    if packed:
        _, cu, inp = _packed(gen, dtype)
        extra, ref_fn = dict(cu_seqlens=cu.to(DEV)), _alone(inp, cu)
    else:
        inp, extra, ref_fn = make_inputs(gen, L=45, P=P, G=G, dtype=dtype), {}, ssd_reference
    seed = int(torch.randint(2**62, (1,), generator=gen))
    ref = run(ref_fn, {k: v.double() for k, v in inp.items()}, torch.Generator().manual_seed(seed), dt_softplus=True)
    got = {}
    for head_loop in (True, False):
        monkeypatch.setattr(ssd_triton_module, "make_plan", lambda *a, _h=head_loop, **k: make_plan(*a, **k, head_loop=_h))
        got[head_loop] = run(triton_with(0, 1), inp, torch.Generator().manual_seed(seed), dt_softplus=True,
                             chunk_size=16, **extra)  # fmt: skip
        assert_all_close(got[head_loop], ref, dtype, GRAD_NAMES)
    assert ran == ["heads", "one"]
    if dtype == torch.float32:
        for name in GRAD_NAMES:
            assert_close(got[True][2][name], got[False][2][name], 1e-5, f"grad {name}, head loop against one head")


WHOLE_KERNELS = ("_ssd_states_kernel", "_ssd_segment_sums_kernel", "_ssd_scan_fwd_kernel", "_ssd_dstates_kernel",
                 "_ssd_bwd_kernel")


@pytest.mark.parametrize("dtype, seg, span, fwd_span, keep", [
    (torch.bfloat16, 2, 1, 1, True),  # chunk-parallel both ways, the forward's states kept
    (torch.bfloat16, 2, 0, 0, False),  # walks both ways, the states recomputed by the backward
    (torch.float32, 3, 1, 0, True),  # the walking scan storing the states; chunk-parallel backward
])  # fmt: skip
def test_whole_tiles(gen, monkeypatch, dtype, seg, span, fwd_span, keep):
    """Where every chunk is full and the tiles cover P and N (``WHOLE_TILES``), the chunk loops of the four
    chunk kernels load and store without element masks. Output, final state and every gradient equal those of
    the masked loops (bit for bit in the interpreter), and so do those of the forward without a gradient (which,
    walking, loads its tiles a chunk ahead), and match the float64 loop. Every launch got the WHOLE asked for."""
    from ssmkit.ops.ssd import triton as ssd_triton_module, triton_launch

    make_plan, seen = ssd_triton_module.make_plan, []
    monkeypatch.setattr(ssd_triton_module, "make_plan", lambda *a, **k: make_plan(*a, **k, head_loop=False))
    monkeypatch.setattr(triton_launch, "KEEP_STATES", keep)
    spy_launches(monkeypatch, triton_launch, WHOLE_KERNELS, lambda name, kw: seen.append(kw["WHOLE"]))
    inp = make_inputs(gen, L=64, P=16, N=16, G=2, dtype=dtype, D_shape="HP")  # chunks of 16: four, all full
    seed = int(torch.randint(2**62, (1,), generator=gen))
    f = triton_with(seg, span, fwd_span)
    got, calls = {}, {}
    for whole in (True, False):
        monkeypatch.setattr(triton_launch, "WHOLE_TILES", whole)
        seen.clear()
        got[whole] = run(f, inp, torch.Generator().manual_seed(seed), dt_softplus=True, chunk_size=16)
        with torch.no_grad():
            got[whole] += f(**{k: v.to(DEV) for k, v in inp.items()}, dt_softplus=True, chunk_size=16)
        calls[whole] = list(seen)
    assert calls[True] == [True] * len(calls[True]) and calls[False] == [False] * len(calls[True])
    assert len(calls[True]) >= 5  # (a forward and a backward: the scan, the fused kernel, the walks)
    (y, s, g, y_ng, s_ng), (y_m, s_m, g_m, y_ng_m, s_ng_m) = got[True], got[False]
    pairs = [("y", y, y_m), ("final state", s, s_m), ("y without a gradient", y_ng, y_ng_m),
             ("final state without a gradient", s_ng, s_ng_m), *((f"grad {k}", g[k], g_m[k]) for k in GRAD_NAMES)]
    for what, a, b in pairs:
        if DEV == "cpu":  # the interpreter runs the same operations in the same order
            assert torch.equal(a, b), f"{what}: whole tiles differ from the masked loops"
        else:  # two compilations (contractions may differ)
            assert_close(a, b, 1e-6 if dtype == torch.float32 else 1e-3, f"{what}: whole against masked")
    ref = run(ssd_reference, {k: v.double() for k, v in inp.items()}, torch.Generator().manual_seed(seed),
              dt_softplus=True)  # fmt: skip
    assert_all_close((y, s, g), ref, dtype, GRAD_NAMES)
    assert_close(y_ng, ref[0], TOL[dtype], "y without a gradient")


def test_whole_tiles_rule():
    """Whole tiles only where every chunk is full (not packed, L a multiple of a power-of-two chunk) and the
    tiles cover P and N exactly."""
    from ssmkit.ops.ssd.triton_launch import make_plan, whole_tiles

    x = torch.empty(2, 64, 4, 16, device="meta")
    plan = make_plan(x, 16, 16, None, seg_chunks=2, fwd_span=1)
    assert whole_tiles(plan, 64, 16, 16, 16, 16)
    assert not whole_tiles(plan, 60, 16, 16, 16, 16)  # the last chunk part-filled
    assert not whole_tiles(plan, 64, 12, 16, 16, 16) and not whole_tiles(plan, 64, 16, 12, 16, 16)
    assert not whole_tiles(make_plan(x, 16, 16, 1, seg_chunks=2, fwd_span=1), 64, 16, 16, 16, 16)  # packed
    odd = make_plan(torch.empty(2, 48, 4, 16, device="meta"), 16, 12, None, seg_chunks=2, fwd_span=1)
    assert odd.Q == 12 and not whole_tiles(odd, 48, 16, 16, 16, 16)  # chunks of 12 in tiles of 16


@pytest.mark.parametrize("keep, cap", [(True, None), (False, None), (True, 2 * 6 * 4 * 16 * 12 * 4 - 1)])
@pytest.mark.parametrize("fwd_span", [0, 1])
def test_states_kept_or_recomputed(gen, monkeypatch, keep, cap, fwd_span):
    """The backward reads the state entering every chunk from the forward (kept by the walking scan, or
    by the chunk-parallel forward's state walk) or recomputes it: output, final state and every gradient
    against the float64 loop either way, with several segments; the states are kept only when asked
    for, a gradient will be needed and they fit ``KEEP_STATES_MAX_BYTES`` (here one byte short of the
    (2 rows, 6 chunks, 4 heads, 16, 12) fp32 states)."""
    from ssmkit.ops.ssd import triton as ssd_triton_module, triton_launch

    monkeypatch.setattr(triton_launch, "KEEP_STATES", keep)
    if cap is not None:
        monkeypatch.setattr(triton_launch, "KEEP_STATES_MAX_BYTES", cap)
    kept, asked = [], []

    def spy_fwd(*args):
        asked.append(args[-1])
        return triton_launch.ssd_fwd(*args)

    def spy_bwd(*args, **kw):
        h_kept = inspect.signature(triton_launch.ssd_bwd).bind(*args, **kw).arguments.get("h_kept")
        kept.append(h_kept is not None and h_kept.numel() > 0)
        return triton_launch.ssd_bwd(*args, **kw)

    monkeypatch.setattr(ssd_triton_module, "ssd_fwd", spy_fwd)
    monkeypatch.setattr(ssd_triton_module, "ssd_bwd", spy_bwd)
    inp = make_inputs(gen, L=45, P=12, G=2, dtype=torch.float32)
    seed = int(torch.randint(2**62, (1,), generator=gen))
    f = triton_with(2, -1, fwd_span)
    got = run(f, inp, torch.Generator().manual_seed(seed), dt_softplus=True, chunk_size=8)
    ref = run(ssd_reference, {k: v.double() for k, v in inp.items()}, torch.Generator().manual_seed(seed),
              dt_softplus=True)  # fmt: skip
    assert_all_close(got, ref, torch.float32, GRAD_NAMES)
    assert (asked, kept) == ([keep], [keep and cap is None])
    with torch.no_grad():  # no gradient to come: nothing kept
        f(**{k: v.to(DEV) for k, v in inp.items()}, dt_softplus=True, chunk_size=8)
    assert asked == [keep, False]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_forward_without_gradient_walks(gen, monkeypatch, dtype):
    """With no gradient to come, a 16-bit forward takes the walking plan (``forward_span``; nothing per chunk
    goes to memory), fp32 keeps the plan's choice; with a gradient, 16-bit keeps it too. Output and final
    state against the float64 loop either way (four segments of 2 chunks)."""
    from ssmkit.ops.ssd import triton as ssd_triton_module, triton_launch

    spans = []

    def spy_fwd(*args):
        spans.append(args[11].fwd_span)  # (the plan)
        return triton_launch.ssd_fwd(*args)

    monkeypatch.setattr(ssd_triton_module, "ssd_fwd", spy_fwd)
    monkeypatch.setattr(triton_launch, "STATE_PROGRAMS_PER_SM", 0)  # the plan's own choice: chunk-parallel
    inp = make_inputs(gen, L=60, P=12, G=2, dtype=dtype)
    default = triton_launch.make_plan(inp["x"].to(DEV), 16, 8, None, 2).fwd_span
    assert default == 1
    f = triton_with(2)
    ref_y, ref_s = ssd_reference(**{k: v.double().to(DEV) for k, v in inp.items()}, dt_softplus=True,
                                 return_final_state=True)  # fmt: skip
    with torch.no_grad():
        y, s = f(**{k: v.to(DEV) for k, v in inp.items()}, dt_softplus=True, chunk_size=8)
    assert spans == [0 if dtype == torch.bfloat16 else default]
    assert_close(y, ref_y, TOL[dtype], "y")
    assert_close(s, ref_s, TOL[dtype], "final state")
    seed = int(torch.randint(2**62, (1,), generator=gen))
    got = run(f, inp, torch.Generator().manual_seed(seed), dt_softplus=True, chunk_size=8)
    assert spans[1:] == [default]
    assert_close(got[0], ref_y, TOL[dtype], "y (gradient to come)")


@pytest.mark.parametrize("ahead", [True, False])
@pytest.mark.parametrize("packed", [False, True])
def test_walking_forward_tiles_ahead(gen, monkeypatch, ahead, packed):
    """The walking scan with each chunk's x, B, C tiles loaded while the chunk before it is computed
    (``TILES_AHEAD``, a forward with no gradient to come) or where they are used: output and final states
    against the float64 loop, over three segments, and for packed sequences (chunks of several sequences)."""
    from ssmkit.ops.ssd import triton_launch

    monkeypatch.setattr(triton_launch, "TILES_AHEAD", ahead)
    if packed:
        _, cu, inp = _packed(gen, torch.float32)
        ref_fn, extra = _alone(inp, cu), dict(cu_seqlens=cu.to(DEV))
    else:
        inp = make_inputs(gen, L=45, P=12, G=2)
        ref_fn, extra = ssd_reference, {}
    ref_y, ref_s = ref_fn(**{k: v.double().to(DEV) for k, v in inp.items()}, dt_softplus=True, return_final_state=True)
    with torch.no_grad():
        y, s = triton_with(2, -1, 0)(**{k: v.to(DEV) for k, v in inp.items()}, dt_softplus=True, chunk_size=8, **extra)
    assert_close(y, ref_y, TOL[torch.float32], "y")
    assert_close(s, ref_s, TOL[torch.float32], "final state")


@pytest.mark.parametrize("chained", [True, False])
@pytest.mark.parametrize("dtype, L, chunk, seg, init, strong", [
    (torch.float32, 45, 8, 2, True, False),  # L not a multiple of the chunk; the initial state enters segment 0
    (torch.bfloat16, 64, 16, 1, False, False),  # one chunk per segment
    (torch.float32, 41, 7, 3, True, True),  # odd chunk; chunk log decays near -1e4 (terms below the range)
])  # fmt: skip
def test_chained_segment_sums(gen, monkeypatch, chained, dtype, L, chunk, seg, init, strong):
    """Each segment's own state at its end (forward) and gradient at its start (backward) as one chained
    product per segment (``CHAINED_SEGMENT_SUMS``: each chunk's operand scaled to the segment's edge) or by
    the walks' recurrence: output, final state and every gradient (the final state in the loss) against the
    float64 loop, with the chained kernel launched once each way, or not at all."""
    from ssmkit.ops.ssd import triton_launch

    monkeypatch.setattr(triton_launch, "CHAINED_SEGMENT_SUMS", chained)
    launches = []
    spy_launches(monkeypatch, triton_launch, ["_ssd_segment_sums_kernel"],
                 lambda name, kw: launches.append(kw["BACKWARD"]))  # fmt: skip
    inp = make_inputs(gen, L=L, dtype=dtype, strong_decay=strong)
    if not init:
        inp["initial_state"] = None
    seed = int(torch.randint(2**62, (1,), generator=gen))
    got = run(triton_with(seg, 1, 0), inp, torch.Generator().manual_seed(seed), dt_softplus=True, chunk_size=chunk)
    ref = run(ssd_reference, {k: None if v is None else v.double() for k, v in inp.items()},
              torch.Generator().manual_seed(seed), dt_softplus=True)  # fmt: skip
    for t in (got[0], got[1], *got[2].values()):
        assert torch.isfinite(t).all()
    assert_all_close(got, ref, dtype, [k for k in GRAD_NAMES if inp[k] is not None])
    assert launches == ([False, True] if chained else [])


def test_chained_segment_sums_rule():
    """Batch rows take the chained segment sums; packed sequences (which open and close inside a segment)
    take the walks."""
    from ssmkit.ops.ssd.triton_launch import chains_segments, make_plan

    x = torch.empty(1, 64, 4, 16, device="meta")
    assert chains_segments(make_plan(x, 16, 16, None, seg_chunks=2))
    assert not chains_segments(make_plan(x, 16, 16, 3, seg_chunks=2))


def test_one_wave_segments_rule():
    """With a gradient to come, long rows walk one wave of segments (2 scan programs per SM) where the plan would
    take two waves, if that wave is >= 90% full and segments keep >= 128 chunks (sms = 132, the H200's)."""
    from types import SimpleNamespace

    from ssmkit.ops.ssd.triton_launch import one_wave_seg_chunks

    plan = lambda n_segs, n_chunks, fwd_span=0: SimpleNamespace(n_segs=n_segs, n_chunks=n_chunks, fwd_span=fwd_span)  # noqa: E731
    assert one_wave_seg_chunks(plan(8, 2048), 64, 132) == 512  # 64K tokens, 64 heads: 8 -> 4 segments
    assert one_wave_seg_chunks(plan(16, 2048), 32, 132) == 256  # 64K tokens, 32 heads: 16 -> 8
    assert one_wave_seg_chunks(plan(8, 512), 64, 132) == 128  # 16K tokens, 64 heads: 8 -> 4
    assert one_wave_seg_chunks(plan(5, 1024), 96, 132) == 0  # 96 heads: 2 segments would fill 73% of a wave
    assert one_wave_seg_chunks(plan(8, 256), 64, 132) == 0  # B=2 L=8192 H=32: segments of 64 chunks
    assert one_wave_seg_chunks(plan(8, 2048, fwd_span=1), 64, 132) == 0  # chunk-parallel forward: no walks
    assert one_wave_seg_chunks(plan(1, 2048), 64, 132) == 0  # one walk per row already


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the rule applies to 16-bit rows on the GPU")
def test_one_wave_segments_train(gen, monkeypatch):
    """One sequence of 16K tokens with 64 heads (bf16, P=64, N=128, chunk 32) trains with 4 segments where the
    plan walks 8: forward and backward take the same segments, and output, final state and every gradient
    match those of the plan's 8 segments and the float32 torch backend."""
    from ssmkit.ops.ssd import triton_launch

    inp = make_inputs(gen, b=1, L=16384, H=64, P=64, N=128, G=1, dtype=torch.bfloat16)
    seen = []
    make_plan = triton_launch.make_plan

    def spy(*args, **kw):
        plan = make_plan(*args, **kw)
        seen.append(plan.n_segs)
        return plan

    from ssmkit.ops.ssd import triton as ssd_triton_module

    monkeypatch.setattr(ssd_triton_module, "make_plan", spy)
    seed, kw = int(torch.randint(2**62, (1,), generator=gen)), dict(dt_softplus=True, chunk_size=32)
    got = run(triton_with(0), inp, torch.Generator().manual_seed(seed), **kw)
    assert seen and set(seen) == {4}, seen
    plan8 = run(triton_with(64), inp, torch.Generator().manual_seed(seed), **kw)
    ref = run(lambda **k: ssd(**k, backend="torch"), {k: (v.float() if v is not None and v.is_floating_point() else v)
                                                      for k, v in inp.items()}, torch.Generator().manual_seed(seed), **kw)
    names = [k for k in GRAD_NAMES if inp[k] is not None]
    assert_all_close(got, plan8, torch.bfloat16, names)
    (y, s, g), (y_r, s_r, g_r) = got, ref
    assert_close(y.float(), y_r, TOL[torch.bfloat16], "y against float32 torch")
    assert_close(s, s_r, TOL[torch.bfloat16], "final state against float32 torch")
    for name in names:
        assert_close(g[name].float(), g_r[name], TOL[torch.bfloat16], f"grad {name} against float32 torch")


@pytest.mark.parametrize("ahead", [True, False])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("seg", [2, 64])
def test_storing_scan_tiles_ahead(gen, monkeypatch, ahead, packed, seg):
    """The walking scan that stores every chunk's entering state for the backward (a gradient to come), with
    its tiles loaded a chunk ahead or where used (``STORE_H_TILES_AHEAD``): output, final state and every
    gradient against the float64 loop, over segments of two chunks or in one walk (the GPU's plan where one
    segment per row fills it), plain and packed; the backward read the kept states."""
    from ssmkit.ops.ssd import triton as ssd_triton_module, triton_launch

    monkeypatch.setattr(triton_launch, "STORE_H_TILES_AHEAD", ahead)
    kept = []

    def spy_bwd(*args, **kw):
        h_kept = inspect.signature(triton_launch.ssd_bwd).bind(*args, **kw).arguments.get("h_kept")
        kept.append(h_kept is not None and h_kept.numel() > 0)
        return triton_launch.ssd_bwd(*args, **kw)

    monkeypatch.setattr(ssd_triton_module, "ssd_bwd", spy_bwd)
    if packed:
        _, cu, inp = _packed(gen, torch.float32)
        ref_fn, extra = _alone(inp, cu), dict(cu_seqlens=cu.to(DEV))
    else:
        inp = make_inputs(gen, L=45, P=12, G=2, dtype=torch.float32)
        ref_fn, extra = ssd_reference, {}
    seed = int(torch.randint(2**62, (1,), generator=gen))
    got = run(triton_with(seg, -1, 0), inp, torch.Generator().manual_seed(seed), dt_softplus=True, chunk_size=8,
              **extra)  # fmt: skip
    ref = run(ref_fn, {k: v.double() for k, v in inp.items()}, torch.Generator().manual_seed(seed), dt_softplus=True)
    assert_all_close(got, ref, torch.float32, GRAD_NAMES)
    assert kept == [True]


def test_optional_inputs_absent_and_strong_decay(gen):
    """No D, z, dt_bias, initial state; dt|A| up to ~160 per step stays finite and exact."""
    full = make_inputs(gen, L=40, G=2, strong_decay=True)
    inp = {k: full[k] for k in ("x", "dt", "A", "B", "C")}
    seed = int(torch.randint(2**62, (1,), generator=gen))
    got = run(ssd, inp, torch.Generator().manual_seed(seed), chunk_size=16, backend="triton")
    ref = run(ssd_reference, {k: v.double() for k, v in inp.items()}, torch.Generator().manual_seed(seed))
    for t in (got[0], got[1], *got[2].values()):
        assert torch.isfinite(t).all()
    assert_all_close(got, ref, torch.float32, ("x", "dt", "A", "B", "C"))


@pytest.mark.parametrize("strong_decay", [False, True])
def test_several_segments_with_states(gen, strong_decay):
    """Four segments of three chunks with initial and final states, under ordinary and strong
    decay (chunk log decays near -1e4): the segment passing forward and backward."""
    inp = make_inputs(gen, L=75, G=2, strong_decay=strong_decay)
    seed = int(torch.randint(2**62, (1,), generator=gen))
    got = run(triton_with(3, 1), inp, torch.Generator().manual_seed(seed), dt_softplus=True, chunk_size=8)
    ref = run(ssd_reference, {k: v.double() for k, v in inp.items()}, torch.Generator().manual_seed(seed),
              dt_softplus=True)  # fmt: skip
    for t in (got[0], got[1], *got[2].values()):
        assert torch.isfinite(t).all()
    assert_all_close(got, ref, torch.float32, GRAD_NAMES)


@pytest.mark.parametrize("seg, fwd_span, keep", [(6, 1, True), (2, 1, True), (3, 2, True), (3, 0, True), (2, 0, False)])
def test_state_walks_in_tiles(gen, monkeypatch, seg, fwd_span, keep):
    """The state walks split the (N, P) state into tiles, masked at both edges (N = 40 and P = 20 in tiles
    of 16 x 16), with the chunk-parallel forward (one segment per row, 6 chunks, or several; spans of 1 or 2)
    or the walking one (``WALKING_PLAN_TILES``; the backward's states walk runs when nothing was kept)."""
    from ssmkit.ops.ssd import triton_launch

    monkeypatch.setattr(triton_launch, "STATE_TILE", (16, 16))
    monkeypatch.setattr(triton_launch, "WALKING_PLAN_TILES", True)
    monkeypatch.setattr(triton_launch, "KEEP_STATES", keep)
    inp = make_inputs(gen, L=45, P=20, N=40, G=2)
    plan = triton_launch.make_plan(inp["x"].to(DEV), 40, 8, None, seg, fwd_span=fwd_span)
    assert (plan.tiled_walks, plan.state_block_n, plan.state_block_p, plan.n_chunks) == (True, 16, 16, 6)
    seed = int(torch.randint(2**62, (1,), generator=gen))
    got = run(triton_with(seg, -1, fwd_span), inp, torch.Generator().manual_seed(seed), dt_softplus=True,
              chunk_size=8)  # fmt: skip
    ref = run(ssd_reference, {k: v.double() for k, v in inp.items()}, torch.Generator().manual_seed(seed),
              dt_softplus=True)  # fmt: skip
    assert_all_close(got, ref, torch.float32, GRAD_NAMES)


@pytest.mark.parametrize("span", [1, 0])
def test_carried_decay_term_in_p_blocks(gen, monkeypatch, span):
    """The decay gradient's exp(acum_last) <g_c, h_{c-1}>, formed per backward P block as the trace of its
    part of g^T h: fp32 P = 40 runs two P blocks (one masked) over two segments, with the chunks handled
    independently (span 1) or walked (span 0)."""
    from ssmkit.ops.ssd import triton_launch

    monkeypatch.setattr(triton_launch, "STATE_TILE", (16, 16))
    inp = make_inputs(gen, L=45, P=40, N=24, G=2)
    plan = triton_launch.make_plan(inp["x"].to(DEV), 24, 8, None, 3, bwd_span=span, fwd_span=1)
    assert (plan.block_p_bwd, plan.n_segs, plan.state_block_n) == (32, 2, 16)
    seed = int(torch.randint(2**62, (1,), generator=gen))
    got = run(triton_with(3, span, 1), inp, torch.Generator().manual_seed(seed), dt_softplus=True, chunk_size=8)
    ref = run(ssd_reference, {k: v.double() for k, v in inp.items()}, torch.Generator().manual_seed(seed),
              dt_softplus=True)  # fmt: skip
    assert_all_close(got, ref, torch.float32, GRAD_NAMES)


@pytest.mark.parametrize("use", [0, 1])
def test_gradient_of_one_output_only(gen, use):
    """Only y (use=0) or only the final state (use=1) reaches the loss: the other output's gradient
    arrives as None, not as zeros, and counts as zero."""
    inp = make_inputs(gen, L=21, G=2)
    leaves = {k: v.detach().to(DEV).requires_grad_(True) for k, v in inp.items()}
    ref = {k: v.detach().double().requires_grad_(True) for k, v in inp.items()}
    out = ssd(**leaves, dt_softplus=True, chunk_size=8, return_final_state=True, backend="triton")[use]
    out_r = ssd_reference(**ref, dt_softplus=True, return_final_state=True)[use]
    w = torch.randn(out_r.shape, generator=gen, dtype=torch.float64)
    g = torch.autograd.grad((out.double() * w.to(DEV)).sum(), list(leaves.values()), allow_unused=True)
    g_r = torch.autograd.grad((out_r * w).sum(), list(ref.values()), allow_unused=True)
    for name, a, r in zip(leaves, g, g_r):
        if r is None:  # the final state depends on neither C, D nor z
            assert a is None or not a.any(), f"grad {name} should be zero"
        else:
            assert_close(a.cpu(), r, TOL[torch.float32], f"grad {name} (output {use} only)")


def _packed(gen, dtype):
    lens = [20, 0, 1, 23, 16]  # an empty and a one-token sequence; 16 = one whole chunk
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    inp = make_inputs(gen, b=1, L=sum(lens), G=2, dtype=dtype, D_shape="HP", n_states=len(lens))
    return lens, cu, inp


def _alone(inp: dict, cu: torch.Tensor) -> dict:
    """Run each packed sequence alone through the float64 loop, as ``ssd`` would return them."""
    bounds = cu.tolist()

    def f(return_final_state=True, **kw):
        ys, ss = [], []
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            cut = {n: (v[:, a:b] if n in ("x", "dt", "B", "C", "z") else v) for n, v in kw.items()}
            y, s = ssd_reference(**cut | {"initial_state": kw["initial_state"][k : k + 1]}, return_final_state=True)
            ys.append(y)
            ss.append(s)
        return torch.cat(ys, 1), torch.cat(ss, 0)

    return f


PACKED_CASES = [  # dtype, seg_chunks (0: default plan, one segment on CPU), bwd_span, fwd_span (-1: default)
    (torch.float32, 0, -1, -1),
    (torch.bfloat16, 0, -1, -1),
    (torch.float32, 0, 0, 0),  # the backward and the forward walk the segments
    (torch.float32, 1, -1, -1),  # a segment per chunk: the passing carries every state across chunks
    (torch.bfloat16, 2, -1, 0),  # segments in which sequences open and close
    (torch.float32, 3, 0, 2),
]


@pytest.mark.parametrize("dtype, seg, span, fwd_span", PACKED_CASES)
def test_packed_sequences_do_not_leak(gen, dtype, seg, span, fwd_span):
    """cu_seqlens: each sequence equals itself run alone (outputs, per-sequence final
    states, every gradient), so no state or gradient crosses a boundary (both backward modes;
    segments that hold several sequences' chunks, and sequences that span segments)."""
    lens, cu, inp = _packed(gen, dtype)
    seed = int(torch.randint(2**62, (1,), generator=gen))
    cu_dev = cu.to(DEV).long() if dtype == torch.bfloat16 else cu.to(DEV)
    got = run(triton_with(seg, span, fwd_span), inp, torch.Generator().manual_seed(seed), dt_softplus=True,
              chunk_size=16, cu_seqlens=cu_dev)  # fmt: skip
    ref = run(_alone(inp, cu), {k: v.double() for k, v in inp.items()}, torch.Generator().manual_seed(seed),
              dt_softplus=True)  # fmt: skip
    assert got[1].shape == (len(lens),) + inp["initial_state"].shape[1:]
    assert_all_close(got, ref, dtype, GRAD_NAMES)
    # The empty sequence keeps its initial state and passes its gradient straight through.
    assert torch.equal(got[1][1].cpu(), inp["initial_state"][1])


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_packed_sequences_other_backends(gen, backend):
    """Every backend accepts cu_seqlens (they run each sequence alone)."""
    _, cu, inp = _packed(gen, torch.float32)
    y, s = ssd(**inp, dt_softplus=True, chunk_size=16, backend=backend, cu_seqlens=cu, return_final_state=True)
    y_r, s_r = _alone(inp, cu)(**{k: v.double() for k, v in inp.items()}, dt_softplus=True)
    assert_close(y, y_r, TOL[torch.float32], "y")
    assert_close(s, s_r, TOL[torch.float32], "final states")


def test_compile_fullgraph(gen):
    """The custom ops trace into one graph (fake kernels, autograd) and give eager's numbers."""
    inp = make_inputs(gen, L=21, G=2)

    def f(**kw):
        return ssd(**kw, dt_softplus=True, chunk_size=16, backend="triton", return_final_state=True)

    seed = int(torch.randint(2**62, (1,), generator=gen))
    eager = run(lambda return_final_state, **kw: f(**kw), inp, torch.Generator().manual_seed(seed))
    compiled_f = torch.compile(f, fullgraph=True, backend="aot_eager")  # the capture is what is checked
    compiled = run(lambda return_final_state, **kw: compiled_f(**kw), inp, torch.Generator().manual_seed(seed))
    assert_all_close(compiled, eager, torch.float32, GRAD_NAMES)


@pytest.mark.parametrize("eager_function", [True, False])
def test_eager_calls_and_custom_ops_agree(gen, monkeypatch, eager_function):
    """Outside torch.compile the kernels run through a plain autograd.Function (``EAGER_FUNCTION``), never
    through the custom ops; with it off, through the ops: output, final state and every gradient against
    the float64 loop either way."""
    from ssmkit.ops.ssd import triton as ssd_triton_module

    monkeypatch.setattr(ssd_triton_module, "EAGER_FUNCTION", eager_function)
    if eager_function:
        def refuse(*args):
            raise AssertionError("the custom op was called outside torch.compile")

        monkeypatch.setattr(ssd_triton_module, "_ssd_fwd_op", refuse)
    inp = make_inputs(gen, L=27, G=2)
    seed = int(torch.randint(2**62, (1,), generator=gen))
    got = run(ssd, inp, torch.Generator().manual_seed(seed), dt_softplus=True, chunk_size=8, backend="triton")
    ref = run(ssd_reference, {k: v.double() for k, v in inp.items()}, torch.Generator().manual_seed(seed),
              dt_softplus=True)  # fmt: skip
    assert_all_close(got, ref, torch.float32, GRAD_NAMES)


def test_fake_and_meta_tensors_take_the_ops(gen):
    """Under FakeTensorMode and on the meta device (shape inference, no kernels) the call goes through the
    custom ops' fake implementation: y and the final state come back with their shapes and dtypes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ssmkit.ops.ssd.triton import ssd_triton

    inp = make_inputs(gen, L=21, G=2)
    for mode, device in ((FakeTensorMode(), DEV), (contextlib.nullcontext(), "meta")):
        with mode:
            args = {k: torch.empty(v.shape, dtype=v.dtype, device=device) for k, v in inp.items()}
            y, s = ssd_triton(**args, dt_softplus=True, chunk_size=8)
        assert (y.shape, y.dtype, s.shape, s.dtype) == (inp["x"].shape, inp["x"].dtype, (2, 4, 8, 16), torch.float32)


def test_opcheck(gen):
    """torch.library.opcheck: schema, fake tensor and autograd registration of the forward op."""
    import ssmkit.ops.ssd.triton  # noqa: F401  (registers the ops)

    inp = make_inputs(gen, b=1, L=9, H=2, G=1)
    args = [inp[k].to(DEV).requires_grad_(True) for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")]
    tests = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(torch.ops.ssmkit.ssd_fwd.default, (*args, None, True, 8, 0, -1, -1, True, True), test_utils=tests)


def _packed_views(inp: dict) -> dict:
    """x, B, C and dt as views of one (b, L, H P + 2 G N + H) tensor, as the Mamba-2 layer's
    projection gives them (token stride larger than a row; taken without copies)."""
    b, L, H, P = inp["x"].shape
    G, N = inp["B"].shape[2:]
    packed = torch.cat([inp["x"].reshape(b, L, H * P), inp["B"].reshape(b, L, G * N), inp["C"].reshape(b, L, G * N),
                        inp["dt"]], dim=-1)  # fmt: skip
    xs, Bs, Cs, dts = packed.split([H * P, G * N, G * N, H], dim=-1)
    return inp | dict(x=xs.unflatten(-1, (H, P)), B=Bs.unflatten(-1, (G, N)), C=Cs.unflatten(-1, (G, N)), dt=dts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_views_of_one_projection(gen, dtype):
    """x, B, C, dt as views of one tensor (x, B, C taken with their strides): output, final state and every gradient
    against the float64 loop; y and dx come back contiguous."""
    inp = make_inputs(gen, L=27, G=2, dtype=dtype)
    seed = int(torch.randint(2**62, (1,), generator=gen))
    leaves = {k: v.detach().to(DEV).requires_grad_(True) for k, v in inp.items()}
    views = _packed_views(leaves)
    assert not views["x"].is_contiguous() and views["x"].stride(1) > views["x"].shape[2] * views["x"].shape[3]
    y, s = ssd(**views, dt_softplus=True, chunk_size=8, backend="triton", return_final_state=True)
    assert y.is_contiguous()
    g = torch.Generator().manual_seed(seed)
    wy = projection_weights(y.shape, g, DEV)
    ws = projection_weights(s.shape, g, DEV)
    ((y.double() * wy).sum() + (s.double() * ws).sum()).backward()
    got = (y, s, {k: v.grad for k, v in leaves.items()})
    ref = run(ssd_reference, {k: v.double() for k, v in inp.items()}, torch.Generator().manual_seed(seed),
              dt_softplus=True)  # fmt: skip
    assert_all_close(got, ref, dtype, GRAD_NAMES)


def test_opcheck_strided(gen):
    """The fake implementation's output strides match the kernels' (contiguous) for strided inputs."""
    import ssmkit.ops.ssd.triton  # noqa: F401  (registers the ops)

    inp = _packed_views({k: v.to(DEV) for k, v in make_inputs(gen, b=1, L=9, H=2, G=1).items()})
    names = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")
    args = [inp[k].detach().requires_grad_(True) for k in names]
    tests = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(torch.ops.ssmkit.ssd_fwd.default, (*args, None, True, 8, 0, -1, -1, True, True), test_utils=tests)


def test_auto_prefers_triton_on_cuda():
    assert SSD_BACKENDS.auto_order["cuda"][0] == "triton" and "triton" in SSD_BACKENDS.impls
    if CUDA:
        assert SSD_BACKENDS.resolve("auto", torch.device("cuda")) == "triton"


def test_errors(gen, monkeypatch):
    inp = make_inputs(gen, b=1, L=9, H=2, G=1)
    with pytest.raises(BackendUnavailableError, match=r"ssd: backend 'triton' .*got float64"):
        ssd(**{k: v.double() for k, v in inp.items()}, backend="triton")
    long = make_inputs(gen, b=1, L=300, H=2, G=1, N=16)
    long = {k: v.to("cuda" if CUDA else "cpu") for k, v in long.items()}  # where the triton backend can run
    with pytest.raises(ValueError, match=r"`chunk_size` must be <= 256 for the triton backend, got 300"):
        ssd(**long, chunk_size=300, backend="triton")
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    cases = [
        (dict(cu_seqlens=cu.float()), TypeError, r"`cu_seqlens` must have dtype int32 or int64, got float32"),
        (dict(cu_seqlens=cu[None]), ValueError, r"`cu_seqlens` expected shape \(S \+ 1,\) with S >= 1, got \(1, 3\)"),
        (dict(cu_seqlens=torch.tensor([0, 4, 8])), ValueError, r"`cu_seqlens` must rise from 0 to L=9 .* got \[0, 4, 8\]"),
        (dict(cu_seqlens=torch.tensor([0, 5, 4, 9])), ValueError, r"without decreasing, got \[0, 5, 4, 9\]"),
        (dict(cu_seqlens=cu, initial_state=inp["initial_state"]), ValueError,
         r"`initial_state` expected shape \(S=2, H=2, P=8, N=16\), got \(1, 2, 8, 16\)"),
        (dict(cu_seqlens=cu.tolist()), TypeError, r"`cu_seqlens` must be a torch.Tensor, got list"),
    ]  # fmt: skip
    for change, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            ssd(**inp | change, backend="torch")
    two = make_inputs(gen, b=2, L=9, H=2, G=1)
    with pytest.raises(ValueError, match=r"with `cu_seqlens`, `x` must hold the packed sequences in a batch of one, got batch 2"):
        ssd(**two | {"initial_state": None}, cu_seqlens=cu)
    if not CUDA:
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(BackendUnavailableError, match=r"backend 'triton' cannot run on cpu: .*TRITON_INTERPRET=1"):
            ssd(**inp, backend="triton")


def _gpu_checks():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "benchmarks"))
    import gpu_ssd_checks

    return gpu_ssd_checks


@pytest.mark.skipif(not CUDA, reason="full shapes (H=8, P=64, N=128, L up to 1000) need a GPU")
def test_gpu_full_shapes():
    checks = _gpu_checks()
    rows = checks.run_checks(checks.new_seed())
    failed = [r for r in rows if not r[-1]]
    assert not failed, failed


@pytest.mark.skipif(not CUDA or torch.cuda.get_device_properties(0).total_memory < 100 * 2**30 if CUDA else True,
                    reason="L = 2^20 with 2^32-element tensors needs a GPU with >= 100 GiB")  # fmt: skip
def test_gpu_long_sequence():
    checks = _gpu_checks()
    rows = checks.check_long(checks.new_seed())
    failed = [r for r in rows if not r[-1]]
    assert not failed, failed


def test_fp32_products_and_registers_by_device(monkeypatch):
    """fp32 inputs on a GPU multiply in "tf32x3" with a register cap of 255 where Triton has both
    (fp32 accuracy on tensor cores; without the cap ptxas gave the kernels 32 registers), in
    "ieee" without a cap where it has neither; the CPU interpreter multiplies in "ieee"; 16-bit
    inputs are unchanged. (Meta tensors stand for GPU ones: neither is on the CPU.)"""
    import triton.language as tl

    from ssmkit.ops.ssd import triton_launch as launch

    gpu32, cpu32 = torch.empty(1, 8, 2, 16, device="meta"), torch.empty(1, 8, 2, 16)
    has_both = {"allowed_dot_input_precisions": ("tf32", "tf32x3", "ieee"), "__dataclass_fields__": ("maxnreg",)}
    monkeypatch.setattr(launch, "_cuda_option", lambda name, default: has_both.get(name, default))
    assert launch._dot_flags(gpu32) == {"DT": tl.float32, "PREC": "tf32x3"}
    assert launch.register_cap(gpu32) == {"maxnreg": 255}
    assert launch._dot_flags(cpu32)["PREC"] == "ieee" and launch.register_cap(cpu32) == {}
    assert launch._dot_flags(gpu32.half()) == {"DT": tl.float16, "PREC": "tf32"}
    assert launch.register_cap(gpu32.bfloat16()) == {}
    monkeypatch.setattr(launch, "_cuda_option", lambda name, default: default)  # an older Triton
    assert launch._dot_flags(gpu32)["PREC"] == "ieee" and launch.register_cap(gpu32) == {}


def test_16_bit_runs_chunks_of_32_on_the_gpu(monkeypatch):
    """16-bit inputs run chunks of at most 32 on the GPU (the fastest chunk there), and those whose P
    tile is below 64 also when that speed cap is lifted (at 64 and 128 the forward kernels miscompiled
    there); fp32 and the interpreter keep the chunk asked (up to what fits in shared memory)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ssmkit.ops.ssd import triton_launch
    from ssmkit.ops.ssd.triton_launch import make_plan

    assert triton_launch.NARROW_TILE_CHUNK == 32 and triton_launch.GPU_CHUNK_16BIT == 32
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    with FakeTensorMode():  # a CUDA tensor's plan, without a GPU (seg_chunks, fwd_span given: no SM count needed)
        gpu = {(d, P): torch.empty(2, 1000, 4, P, dtype=d, device="cuda") for d in dtypes for P in (16, 32, 64)}
    cases = [(dtype, P, x, N, chunk) for (dtype, P), x in gpu.items() for N, chunk in ((128, 64), (128, 128),
             (256, 64), (64, 128), (16, 16))]  # fmt: skip
    for dtype, P, x, N, chunk in cases:
        cap = 64 if dtype == torch.float32 else 32
        assert make_plan(x, N, chunk, None, seg_chunks=1, fwd_span=1).Q == min(chunk, cap), (dtype, P, N, chunk)
    monkeypatch.setattr(triton_launch, "GPU_CHUNK_16BIT", 1 << 30)  # the speed cap lifted
    for dtype, P, x, N, chunk in cases:
        plan = make_plan(x, N, chunk, None, seg_chunks=1, fwd_span=1)
        narrow = dtype != torch.float32 and plan.block_p < 64
        assert narrow == (dtype != torch.float32 and (P < 64 or N == 256)), (dtype, P, N)
        cap = 32 if narrow else (64 if dtype == torch.float32 else 128)
        assert plan.Q == min(chunk, cap), (dtype, P, N, chunk)
    cpu = torch.empty(2, 1000, 4, 32, dtype=torch.bfloat16, device="meta")
    assert make_plan(cpu, 128, 64, None).Q == 64


def test_chunks_capped_to_what_fits_in_shared_memory(gen):
    """A chunk_size above what the backward's tiles fit runs as smaller chunks: same function
    (the chunk only changes rounding), no out-of-resources failure on the GPU."""
    from ssmkit.ops.ssd.triton_launch import TILE_CHUNK, make_plan

    for dtype, cap in ((torch.bfloat16, 128), (torch.float16, 128), (torch.float32, 64)):
        x = torch.empty(2, 1000, 4, 64, dtype=dtype, device="meta")
        assert TILE_CHUNK[x.element_size()] == cap
        assert make_plan(x, 128, 256, None).Q == cap
        assert make_plan(x, 128, 32, None).Q == 32
    inp = make_inputs(gen, b=1, L=150, H=2, P=8, G=1, dtype=torch.float32)
    seed = int(torch.randint(2**62, (1,), generator=gen))
    got = run(triton_with(0), inp, torch.Generator().manual_seed(seed), dt_softplus=True, chunk_size=256)
    ref = run(ssd_reference, {k: v.double() for k, v in inp.items()}, torch.Generator().manual_seed(seed),
              dt_softplus=True)  # fmt: skip
    assert_all_close(got, ref, torch.float32, GRAD_NAMES)



@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plans_fitted_to_small_shared_memory(gen, monkeypatch, dtype):
    """A GPU with little shared memory gets smaller P tiles and chunks (``fit_shared_memory``); they compute
    the same function: output, final state and every gradient against the float64 loop, with a masked P
    tile and several chunks per row."""
    from ssmkit.ops.ssd import triton_launch

    inp = make_inputs(gen, b=2, L=45, H=2, P=40, N=32, G=1, dtype=dtype)
    x = inp["x"].to(DEV)
    tuned = triton_launch.make_plan(x, 32, 32, None, fit=False)
    monkeypatch.setattr(triton_launch, "device_major", lambda device: 8)
    limit = (14 if dtype == torch.float32 else 10) * 1024  # (about half of what the tuned plan needs)
    monkeypatch.setattr(triton_launch, "shared_memory", lambda device: limit)
    fitted = triton_launch.make_plan(x, 32, 32, None)
    sizes = lambda p: (p.Q, p.block_p, p.block_p_bwd)  # noqa: E731
    assert all(a <= b for a, b in zip(sizes(fitted), sizes(tuned))) and sizes(fitted) != sizes(tuned)
    assert fitted.Q < tuned.Q or dtype == torch.float32  # (fp32 here: the backward's P tile, 32 -> 16)
    seed = int(torch.randint(2**62, (1,), generator=gen))
    got = run(triton_with(0), inp, torch.Generator().manual_seed(seed), dt_softplus=True, chunk_size=32)
    ref = run(ssd_reference, {k: v.double() for k, v in inp.items()}, torch.Generator().manual_seed(seed),
              dt_softplus=True)  # fmt: skip
    assert_all_close(got, ref, dtype, GRAD_NAMES)

def test_plan_picks_the_forward_by_programs(monkeypatch):
    """The chunk-parallel forward with one segment per row where rows x heads x state tiles fill an
    H200 (132 SMs) STATE_PROGRAMS_PER_SM times over; else the walking scan with as many segments as keep
    its programs within SEG_PROGRAMS_PER_SM per SM (whole waves: never one past), its state walks pipelined."""
    from ssmkit.ops.ssd import triton_launch
    from ssmkit.ops.ssd.triton_launch import make_plan

    monkeypatch.setattr(triton_launch, "sm_count", lambda device: 132)
    big = torch.empty(8, 4096, 32, 64, dtype=torch.bfloat16, device="meta")  # 1024 tiles of (64, 32)
    plan = make_plan(big, 128, 32, None)
    assert (plan.fwd_span, plan.n_segs, plan.state_block_n, plan.state_block_p) == (1, 1, 64, 32)
    one = torch.empty(1, 16384, 64, 64, dtype=torch.bfloat16, device="meta")  # 256 tiles; the scan: 64 programs
    plan = make_plan(one, 128, 32, None)
    assert (plan.fwd_span, plan.n_segs) == (0, 8)  # 512 programs <= 4 x 132 (9 would make 576)
    assert (plan.state_block_n, plan.state_block_p) == (128, 64)  # whole states, like the walking scan
    assert (plan.state_stages, plan.fwd_stages, plan.store_stages) == (3, 1, 2)
    half = torch.empty(1, 16384, 32, 64, dtype=torch.bfloat16, device="meta")
    assert make_plan(half, 128, 32, None).n_segs == 16  # 512 programs (17 would make 544)
    assert make_plan(one, 128, 32, None, fwd_span=1).n_segs == 4  # 1024 state-walk programs

    one_fp32 = torch.empty(1, 16384, 64, 64, device="meta")
    assert make_plan(one_fp32, 128, 64, None).fwd_span == 0  # (by the program count off the GPU)
    gpu_fp32, gpu_one = OnTheGPU(*one_fp32.shape, dtype=one_fp32.dtype), OnTheGPU(*one.shape, dtype=one.dtype)
    assert make_plan(gpu_fp32, 128, 64, None).fwd_span == 1  # fp32 on the GPU: chunk-parallel
    assert make_plan(gpu_one, 128, 64, None).fwd_span == 0  # 16-bit there: by the program count
    monkeypatch.setattr(triton_launch, "FP32_CHUNK_PARALLEL", False)
    assert make_plan(gpu_fp32, 128, 64, None).fwd_span == 0


def test_one_walk_where_it_fills_the_gpu(monkeypatch):
    """On a 132-SM GPU, 16-bit inputs whose rows x heads give every SM a walking-scan program (or whole waves
    of two per SM) walk with one segment, with or without a gradient to come (``WALK_FILL``); short of that,
    and for fp32 or off the GPU, the rules before hold."""
    from ssmkit.ops.ssd import triton_launch
    from ssmkit.ops.ssd.triton_launch import forward_span, make_plan, walk_fill

    monkeypatch.setattr(triton_launch, "sm_count", lambda device: 132)

    assert walk_fill(128, 132) == pytest.approx(128 / 132) and walk_fill(192, 132) == walk_fill(264, 132) == 1.0
    assert walk_fill(300, 132) == pytest.approx(300 / 528) and walk_fill(512, 132) == pytest.approx(512 / 528)
    for rows, L, H in ((8, 4096, 32), (6, 4096, 32), (4, 4096, 32), (16, 2048, 32), (2, 8192, 64)):
        x = OnTheGPU(rows, L, H, 64)
        for grad in (True, False):
            plan = make_plan(x, 128, 32, None, fwd_span=forward_span(x, -1, grad))
            assert (plan.fwd_span, plan.n_segs) == (0, 1), (rows, L, H, grad)
            assert (plan.state_block_n, plan.state_block_p) == (128, 64)  # the backward's walk: whole states
    assert make_plan(OnTheGPU(10, 4096, 32, 64), 128, 32, None).fwd_span == 1  # 320 programs: 0.61 of two waves
    assert make_plan(OnTheGPU(3, 4096, 32, 64), 128, 32, None, fwd_span=0).n_segs == 5  # 96 programs: 528 // 96
    assert make_plan(OnTheGPU(8, 4096, 32, 64, dtype=torch.float32), 128, 32, None).fwd_span == 1  # fp32
    assert make_plan(torch.empty(8, 4096, 32, 64, dtype=torch.bfloat16, device="meta"), 128, 32, None).fwd_span == 1
    monkeypatch.setattr(triton_launch, "WALK_FILL", 2.0)  # (the rule off)
    plan = make_plan(OnTheGPU(8, 4096, 32, 64), 128, 32, None)
    assert (plan.fwd_span, plan.n_segs) == (1, 1)
    assert make_plan(OnTheGPU(8, 4096, 32, 64), 128, 32, None, fwd_span=0).n_segs == 2
