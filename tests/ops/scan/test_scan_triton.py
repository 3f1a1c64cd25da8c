"""Selective scan, backend "triton": forward, final state and every gradient against the float64 loop.

On a machine without CUDA the kernels run in Triton's interpreter
(``TRITON_INTERPRET=1``, set by ``conftest.py`` before any kernel module is imported), on small
shapes; the same tests run on the GPU at full speed.
"""

import math

import pytest
import torch

from numerics import TOL, assert_close, projection_weights, randn
from triton_helpers import DEVICE, requires_triton, spy_launches  # first: skips this file without triton
import triton
import triton.language as tl
from ssmkit.ops.backends import BackendUnavailableError
from ssmkit.ops._triton import triton_unavailable_reason
import ssmkit.ops.scan.triton  # noqa: F401  (registers the ssmkit:: custom ops that the tests name)
from ssmkit.ops.scan import SCAN_BACKENDS, selective_scan, selective_scan_reference
from ssmkit.ops.scan.triton_common import _exp2_fma

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")

pytestmark = requires_triton


def make_inputs(gen, *, b=2, L=37, D=20, N=5, G=None, dtype=torch.float32, full=True, strong_decay=False):
    """Fresh random inputs: activations in ``dtype``, A / D / delta_bias in float32."""
    shape_bc = (b, L, N) if G is None else (b, L, G, N)
    A = -torch.exp(randn(D, N, gen=gen, scale=0.5))
    if strong_decay:  # Δ |A| up to ~100 per step: Ā underflows towards 0
        A = A * 30.0
    inp = dict(
        u=randn(b, L, D, gen=gen, dtype=dtype), delta=randn(b, L, D, gen=gen, dtype=dtype, scale=0.7), A=A,
        B=randn(*shape_bc, gen=gen, dtype=dtype), C=randn(*shape_bc, gen=gen, dtype=dtype),
        D=randn(D, gen=gen) if full else None, z=randn(b, L, D, gen=gen, dtype=dtype) if full else None,
        delta_bias=randn(D, gen=gen, scale=0.5) - 0.5 if full else None,
        initial_state=randn(b, D, N, gen=gen) if full else None,
    )  # fmt: skip
    return {k: (v.to(DEVICE).requires_grad_(True) if v is not None else None) for k, v in inp.items()}


def run(fn, inp, softplus, seed):
    """y, final state, and the gradients of a random projection of both (``projection_weights``)."""
    y, h = fn(**inp, delta_softplus=softplus, return_final_state=True)
    g = torch.Generator().manual_seed(seed)
    wy = projection_weights(y.shape, g, y.device)
    wh = projection_weights(h.shape, g, h.device)
    loss = (y.double() * wy).sum() + (h.double() * wh).sum()
    names = [k for k, v in inp.items() if v is not None]
    grads = torch.autograd.grad(loss, [inp[k] for k in names])
    return y, h, dict(zip(names, grads))


def check_against_reference(inp, softplus, gen, dtype, what=""):
    seed = int(torch.randint(2**31, (1,), generator=gen))
    y, h, grads = run(lambda **kw: selective_scan(**kw, backend="triton"), inp, softplus, seed)
    ref_in = {k: (v.detach().cpu().double().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    y_ref, h_ref, g_ref = run(selective_scan_reference, ref_in, softplus, seed)
    tol = TOL[dtype]
    assert y.dtype == inp["u"].dtype and h.dtype == torch.float32
    assert_close(y.cpu(), y_ref, tol, f"{what} output")
    assert_close(h.cpu(), h_ref, tol, f"{what} final state")
    for name in grads:
        assert grads[name].dtype == inp[name].dtype, f"gradient of `{name}` has dtype {grads[name].dtype}"
        assert_close(grads[name].cpu(), g_ref[name], tol, f"{what} gradient of `{name}`")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_inputs_match_reference(gen, dtype):
    """D, z, delta_bias, softplus and an initial state; odd L, D, N; B/C ungrouped (B, L, N)."""
    check_against_reference(make_inputs(gen, dtype=dtype), True, gen, dtype)


@pytest.mark.parametrize("b_dtype, c_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float16)])
def test_mixed_dtypes(gen, b_dtype, c_dtype):
    """B and C in different dtypes, A / D / Δ bias in 16-bit: every gradient in its input's dtype and shape.
    With both B and C 16-bit the backward's last launch casts dB and dC from one float32 buffer into two
    tensors of their own dtypes; it sums the partials of dA, dD and Δ bias (here over three batch rows;
    ``test_kernel_configs_and_segments`` has several segments) into each parameter's dtype."""
    inp = make_inputs(gen, b=3, L=21, D=12, N=4, dtype=torch.bfloat16)
    for name, dt in (("B", b_dtype), ("C", c_dtype), ("A", torch.bfloat16), ("D", torch.float16),
                     ("delta_bias", torch.bfloat16)):  # fmt: skip
        inp[name] = inp[name].detach().to(dt).requires_grad_(True)
    check_against_reference(inp, True, gen, torch.bfloat16, f"B {b_dtype}, C {c_dtype}")


@pytest.mark.parametrize("G", [1, 2])
def test_grouped_bc(gen, G):
    """(B, L, G, N): with G=2 the 20 channels split 10/10, across the kernel's channel blocks."""
    check_against_reference(make_inputs(gen, G=G, L=19, N=4), True, gen, torch.float32, f"G={G}")


def test_no_optional_inputs(gen):
    """No D, z, bias, softplus or initial state; L=13 not a multiple of any tile."""
    inp = make_inputs(gen, L=13, D=9, N=3, full=False)
    inp["delta"] = torch.rand(inp["delta"].shape, generator=gen).to(DEVICE).requires_grad_(True)
    check_against_reference(inp, False, gen, torch.float32)


@pytest.mark.parametrize("L", [1, 3])
def test_short_sequences(gen, L):
    check_against_reference(make_inputs(gen, L=L, D=6, N=2), True, gen, torch.float32, f"L={L}")


@pytest.mark.parametrize("forward, fma_exp", [("one lane", 0), ("one lane", 8), ("two lanes", 0)])
def test_sixteen_states_default_config(gen, monkeypatch, forward, fma_exp):
    """N = 16 takes the default tiles: in the forward two warps of 32 channels (``one lane``), as they are and
    with half the forward's Ā on the FMA pipe (``fma_exp``, an earlier default), or, where batch x channels
    fill the GPU (and always in the interpreter), two lanes per channel in chunks of 8 (``forward_config``). Strong
    decay sends some Ā below the polynomial's clamp (2^-125)."""
    import dataclasses

    from ssmkit.ops.scan import triton_launch

    default = triton_launch.default_config(16)
    assert (default.block_d, default.num_warps, default.fma_exp, default.lanes) == (64, 2, 0, 1)
    wide = triton_launch.forward_config(16, 2, 12, torch.device("cpu"))
    assert (wide.lanes, wide.share_td, wide.chunk, wide.n_segs) == (2, True, 8, 1)
    if forward == "one lane":
        one = dataclasses.replace(default, fma_exp=fma_exp)
        monkeypatch.setattr(triton_launch, "forward_config", lambda *a: one)
    inp = make_inputs(gen, L=21, D=12, N=16)
    with torch.no_grad():
        inp["A"][:, :4] *= 60.0  # Δ |A| in the hundreds for the first states
        y, h = selective_scan(**inp, delta_softplus=True, return_final_state=True, backend="triton")  # no checkpoints
        ref = {k: v.cpu().double() for k, v in inp.items()}
        y_ref, h_ref = selective_scan_reference(**ref, delta_softplus=True, return_final_state=True)
    assert_close(y.cpu(), y_ref, TOL[torch.float32], "no-grad output")
    assert_close(h.cpu(), h_ref, TOL[torch.float32], "no-grad final state")
    check_against_reference(inp, True, gen, torch.float32, "N=16")  # with checkpoints, and the gradients


@pytest.mark.parametrize("use", ["output", "final state"])
def test_gradient_of_one_output_only(gen, use):
    """Only y or only the final state reaches the loss: the other output's gradient arrives as None
    (not materialized as zeros) and the backward must treat it as zero."""
    inp = make_inputs(gen, L=13, D=8, N=4)
    ref = {k: v.detach().cpu().double().requires_grad_(True) for k, v in inp.items()}
    outs = selective_scan(**inp, delta_softplus=True, return_final_state=True, backend="triton")
    outs_r = selective_scan_reference(**ref, delta_softplus=True, return_final_state=True)
    i = 0 if use == "output" else 1
    w = randn(*outs_r[i].shape, gen=gen).double()
    g = torch.autograd.grad((outs[i].double() * w.to(DEVICE)).sum(), list(inp.values()))
    g_r = torch.autograd.grad((outs_r[i] * w).sum(), list(ref.values()), allow_unused=True)
    for name, a, r in zip(inp, g, g_r):
        if r is None:  # the final state does not depend on C (nor D, z): exact zeros
            assert not a.any(), f"gradient of `{name}` ({use} only) should be zero"
        else:
            assert_close(a.cpu(), r, TOL[torch.float32], f"gradient of `{name}` ({use} only)")


def test_strong_decay(gen):
    """Ā = exp(Δ A) far below float32's resolution of 1: no division by Ā anywhere."""
    check_against_reference(make_inputs(gen, L=17, D=8, N=4, strong_decay=True), True, gen, torch.float32)


@pytest.mark.parametrize("n_segs, dt_ahead, fma_exp, split, L, segs_run",
                         [(1, False, 0, 1, 11, 1), (3, True, 2, 1, 11, 3), (1, True, 4, 1, 11, 1),
                          (3, False, 0, 2, 23, 3), (3, True, 0, 3, 23, 2), (3, False, 0, 3, 13, 2)])  # fmt: skip
def test_kernel_configs_and_segments(gen, n_segs, dt_ahead, fma_exp, split, L, segs_run):
    """Other tile sizes through the launchers: 4-channel blocks (groups of 8 channels then
    fall on block boundaries), chunks of 2 and 4, a state saved every 4 steps; the
    sequence split into segments run in parallel (two passes, forward and backward; the
    forward's local pass skips the last segment, the backward's the first), the local passes
    cut into ``split`` pieces per segment (segments of 8 steps in 2 pieces, of 12 in 3; at L = 13
    the backward's last two pieces lie past the end); and Ā of the first ``fma_exp`` of the 4
    states computed on the FMA pipe."""
    from ssmkit.ops.scan.triton_launch import ScanKernelConfig, scan_bwd, scan_fwd, segments

    cfg = ScanKernelConfig(block_d=4, chunk=2, bwd_block_d=8, bwd_chunk=4, save_every=4, n_segs=n_segs,
                           bwd_n_segs=n_segs, dt_ahead=dt_ahead, fma_exp=fma_exp, bwd_fma_exp=fma_exp,
                           local_split=split, bwd_local_split=split)  # fmt: skip
    assert segments(L, 8, n_segs, 3, 8, cfg, torch.device("cpu"), split)[0] == segs_run
    inp = make_inputs(gen, L=L, D=16, N=4, G=2)
    args = [inp[k].detach() for k in NAMES]
    y, h, hsave = scan_fwd(*args, True, True, cfg)
    ref_in = {k: inp[k].detach().cpu().double().requires_grad_(True) for k in NAMES}
    y_ref, h_ref = selective_scan_reference(**ref_in, delta_softplus=True, return_final_state=True)
    assert hsave.shape == (2, math.ceil(L / 4), 16, 4)  # (B, checkpoints, D, N)
    assert_close(y.cpu(), y_ref, 1e-4, "output")
    assert_close(h.cpu(), h_ref, 1e-4, "final state")
    dy, dh = randn(*y.shape, gen=gen).to(DEVICE), randn(*h.shape, gen=gen).to(DEVICE)
    grads = scan_bwd(dy, dh, *args[:8], hsave, True, cfg)
    g_ref = torch.autograd.grad((y_ref * dy.cpu().double()).sum() + (h_ref * dh.cpu().double()).sum(),
                                [ref_in[k] for k in NAMES])  # fmt: skip
    for name, g, gr in zip(NAMES, grads, g_ref):
        assert_close(g.cpu(), gr, 1e-4, f"gradient of `{name}`")


@pytest.mark.parametrize("L, whole", [(24, True), (23, False)])
def test_backward_local_chunks(gen, monkeypatch, L, whole):
    """The backward's local pass runs its own chunk (``local_chunk``: 4 steps where its pieces are multiples
    of 4, else the backward's chunk): in chunks of 4 or 2 steps, with element masks (L = 23: the last piece
    cut short) or without, it gives the gradients of the float64 loop and the same ones as each other
    (segments of 8 steps in 2 pieces, the main kernel in chunks of 2)."""
    from ssmkit.ops.scan import triton_launch as launch
    from ssmkit.ops.scan.triton_launch import ScanKernelConfig, default_config, local_chunk, scan_bwd, scan_fwd

    assert local_chunk(default_config(16, torch.bfloat16)) == 4 and local_chunk(default_config(16)) == 4
    assert local_chunk(ScanKernelConfig(block_d=4, chunk=2, bwd_block_d=4, bwd_chunk=2, save_every=2)) == 2
    with pytest.raises(ValueError, match="bwd_local_chunk must be 0 .automatic. or a power of two, got 3"):
        ScanKernelConfig(block_d=4, chunk=2, bwd_block_d=4, bwd_chunk=2, save_every=2, bwd_local_chunk=3)
    inp = make_inputs(gen, L=L, D=8, N=4)
    args = [inp[k].detach() for k in NAMES]
    dy, dh = randn(2, L, 8, gen=gen).to(DEVICE), randn(2, 8, 4, gen=gen).to(DEVICE)
    seen = []  # (T, WHOLE) of each local launch
    spy_launches(monkeypatch, launch, ("selective_scan_bwd_local_kernel",),
                 lambda name, kw: seen.append((kw["T"], kw["WHOLE"])))  # fmt: skip
    grads = {}
    for tl_ in (0, 2):
        cfg = ScanKernelConfig(block_d=4, chunk=4, bwd_block_d=4, bwd_chunk=2, save_every=4, n_segs=3,
                               bwd_n_segs=3, local_split=2, bwd_local_split=2, bwd_local_chunk=tl_)  # fmt: skip
        y, h, hsave = scan_fwd(*args, True, True, cfg)
        grads[tl_] = scan_bwd(dy, dh, *args[:8], hsave, True, cfg)
    assert seen == [(4, whole), (2, whole)]
    ref_in = {k: inp[k].detach().cpu().double().requires_grad_(True) for k in NAMES}
    y_ref, h_ref = selective_scan_reference(**ref_in, delta_softplus=True, return_final_state=True)
    g_ref = torch.autograd.grad((y_ref * dy.cpu().double()).sum() + (h_ref * dh.cpu().double()).sum(),
                                [ref_in[k] for k in NAMES])  # fmt: skip
    for name, g4, g2, gr in zip(NAMES, grads[0], grads[2], g_ref):
        assert_close(g4.cpu(), gr, 1e-4, f"gradient of `{name}` (local chunks of 4)")
        assert_close(g4.cpu(), g2.cpu().double(), 1e-6, f"gradient of `{name}`: local chunks of 4 against 2")


@pytest.mark.parametrize("lanes, share, ahead, block_d, G, n_segs",
                         [(2, False, True, 4, 2, 1), (2, True, False, 4, 2, 3), (4, False, False, 2, 1, 2),
                          (2, True, True, 4, 2, 2), (2, False, False, 4, 2, 2)])  # fmt: skip
def test_lanes_per_channel(gen, lanes, share, ahead, block_d, G, n_segs):
    """The forward with each channel's states spread over ``lanes`` lanes (N = 5: 8 padded states, 4 or 2
    per lane, the last ones padding): output, final state and checkpoints as with one lane per channel,
    through segments and their local pieces; ``share``: each of the two lanes doing the per-(t, d) work
    (softplus, gate) for its half of the steps; ``ahead``: Δ computed a chunk ahead. With D = 14 (the two
    cases of 2 segments and 2 groups) the groups of 7 channels cross the 4-channel blocks (B and C then per
    channel) and the last block has channels past the end."""
    from ssmkit.ops.scan.triton_launch import ScanKernelConfig, scan_fwd

    common = dict(block_d=block_d, chunk=2, bwd_block_d=4, bwd_chunk=2, save_every=4, n_segs=n_segs, local_split=2,
                  dt_ahead=ahead)
    D = 14 if n_segs == 2 and G == 2 else 16
    inp = make_inputs(gen, L=23, D=D, N=5, G=G)
    args = [inp[k].detach() for k in NAMES]
    s1 = scan_fwd(*args, True, True, ScanKernelConfig(**common))[2]
    y, h, hsave = scan_fwd(*args, True, True, ScanKernelConfig(**common, lanes=lanes, share_td=share))
    ref_in = {k: inp[k].detach().cpu().double() for k in NAMES}
    y_ref, h_ref = selective_scan_reference(**ref_in, delta_softplus=True, return_final_state=True)
    assert_close(y.cpu(), y_ref, 1e-4, "output")
    assert_close(h.cpu(), h_ref, 1e-4, "final state")
    assert_close(hsave.cpu(), s1.cpu().double(), 1e-5, "checkpoints against one lane per channel")
    assert s1.abs().sum() > 0


@pytest.mark.parametrize("save_every, lanes, L, n_segs",
                         [(4, 2, 37, 1), (4, 1, 48, 3), (2, 2, 48, 2), (4, 2, 45, 3)])  # fmt: skip
def test_checkpoints_inside_chunks(gen, save_every, lanes, L, n_segs):
    """Checkpoints closer than the forward's chunk of 8 (every 4 or 2 steps: the states inside each chunk are
    saved too), with one or two lanes per channel, whole chunks (L = 48) or not (L = 37, 45: the last chunk's
    later checkpoints lie past the end), one segment or several (segments of whole chunks): the checkpoints equal
    those of a forward whose chunks are the checkpoint span, and the backward from them matches the float64
    loop."""
    from ssmkit.ops.scan.triton_launch import ScanKernelConfig, scan_bwd, scan_fwd

    common = dict(block_d=4, bwd_block_d=4, bwd_chunk=2, save_every=save_every, n_segs=n_segs, bwd_n_segs=n_segs)
    inp = make_inputs(gen, L=L, D=8, N=4)
    args = [inp[k].detach() for k in NAMES]
    y, h, hsave = scan_fwd(*args, True, True, ScanKernelConfig(**common, chunk=8, lanes=lanes))
    y1, h1, s1 = scan_fwd(*args, True, True, ScanKernelConfig(**common, chunk=save_every))
    assert hsave.shape == s1.shape == (2, math.ceil(L / save_every), 8, 4) and s1[:, 1:].abs().min() > 0
    assert_close(hsave.cpu(), s1.cpu().double(), 1e-6, "checkpoints inside chunks against chunk-start ones")
    ref_in = {k: inp[k].detach().cpu().double().requires_grad_(True) for k in NAMES}
    y_ref, h_ref = selective_scan_reference(**ref_in, delta_softplus=True, return_final_state=True)
    assert_close(y.cpu(), y_ref, 1e-4, "output")
    dy, dh = randn(*y.shape, gen=gen).to(DEVICE), randn(*h.shape, gen=gen).to(DEVICE)
    grads = scan_bwd(dy, dh, *args[:8], hsave, True, ScanKernelConfig(**common, chunk=8))
    g_ref = torch.autograd.grad((y_ref * dy.cpu().double()).sum() + (h_ref * dh.cpu().double()).sum(),
                                [ref_in[k] for k in NAMES])  # fmt: skip
    for name, g, gr in zip(NAMES, grads, g_ref):
        assert_close(g.cpu(), gr, 1e-4, f"gradient of `{name}`")


def test_bfloat16_checkpoints(gen):
    """bfloat16 inputs: the checkpoints are stored in bfloat16 (every 4 steps at N = 16, two per chunk of the
    two-lane forward), and the backward recomputes the states from them in float32. Every gradient stays
    within bfloat16's tolerance of the float64 loop, and close to the gradients from float32 checkpoints (the
    rounding of the chunk-start states is all that differs)."""
    import dataclasses

    from ssmkit.ops.scan import triton_launch

    cpu_cfg = triton_launch.forward_config(16, 2, 12, torch.device("cpu"), True, torch.bfloat16)
    assert (cpu_cfg.chunk, cpu_cfg.save_every, triton_launch.default_config(16, torch.bfloat16).save_every) == (8, 4, 4)
    assert triton_launch.default_config(16, torch.float16).save_every == 8
    # the config scan_fwd takes here: the float32-checkpoint runs below differ from it in the checkpoints only
    # (another config is another kernel, whose rounding may differ: on the GPU the one-lane forward runs)
    cfg = triton_launch.forward_config(16, 2, 12, torch.device(DEVICE), True, torch.bfloat16)
    inp = make_inputs(gen, L=40, D=12, N=16, dtype=torch.bfloat16)
    args = [inp[k].detach() for k in NAMES]
    y, h, hsave = triton_launch.scan_fwd(*args, True, True)
    assert hsave.dtype == torch.bfloat16 and hsave.shape == (2, 10, 12, 16)
    y32, _, hsave32 = triton_launch.scan_fwd(*args, True, True, dataclasses.replace(cfg, half_checkpoints=False))
    assert hsave32.dtype == torch.float32 and torch.equal(y, y32)
    assert_close(hsave.cpu(), hsave32.cpu().double(), 2 ** -8, "bfloat16 checkpoints")
    dy = randn(*y.shape, gen=gen, dtype=torch.bfloat16).to(DEVICE)
    grads = triton_launch.scan_bwd(dy, None, *args[:8], hsave, True)
    cfg32 = dataclasses.replace(cfg, half_checkpoints=False)
    grads32 = triton_launch.scan_bwd(dy, None, *args[:8], hsave32, True, cfg32)
    ref_in = {k: inp[k].detach().cpu().double().requires_grad_(True) for k in NAMES}
    y_ref = selective_scan_reference(**ref_in, delta_softplus=True)
    g_ref = torch.autograd.grad((y_ref * dy.cpu().double()).sum(), [ref_in[k] for k in NAMES])
    for name, g, g32, gr in zip(NAMES, grads, grads32, g_ref):
        assert_close(g.cpu(), gr, TOL[torch.bfloat16], f"gradient of `{name}`")
        assert_close(g.cpu(), g32.cpu().double(), 1e-2, f"gradient of `{name}` against float32 checkpoints")


@pytest.mark.parametrize("lanes, share, ahead, n_segs, split",
                         [(1, False, True, 3, 2), (1, False, False, 1, 1), (2, True, False, 3, 2), (2, False, True, 2, 1)])
def test_whole_tiles(gen, monkeypatch, lanes, share, ahead, n_segs, split):
    """Where L is a multiple of the checkpoint span, D of the channel blocks and N a power of two, the loops of
    the forward and the backward run without element masks (``WHOLE``); the forward skips the prefetch after
    each program's last chunk, the backward the one before the sequence's first (segments of 16 steps, their
    local passes in pieces of 8, the backward's in chunks of 4 steps, Δ a chunk ahead or not, one or two lanes
    per channel in the forward). Output,
    final state, checkpoints and every gradient equal those of the masked loops (bit for bit in the
    interpreter) and match the float64 loop."""
    from ssmkit.ops.scan import triton_launch as launch
    from ssmkit.ops.scan.triton_launch import ScanKernelConfig, scan_bwd, scan_fwd

    cfg = ScanKernelConfig(block_d=4, chunk=4, bwd_block_d=4, bwd_chunk=2, save_every=8, n_segs=n_segs,
                           bwd_n_segs=n_segs, local_split=split, bwd_local_split=split, dt_ahead=ahead, lanes=lanes,
                           share_td=share)  # fmt: skip
    inp = make_inputs(gen, L=48, D=8, N=4)
    args = [inp[k].detach() for k in NAMES]
    dy, dh = randn(2, 48, 8, gen=gen).to(DEVICE), randn(2, 8, 4, gen=gen).to(DEVICE)
    seen = []  # the WHOLE each launch was given
    spy_launches(monkeypatch, launch, ("selective_scan_fwd_kernel", "selective_scan_bwd_local_kernel",
                                       "selective_scan_bwd_kernel"), lambda name, kw: seen.append(kw["WHOLE"]))

    def both():
        y, h, hsave = scan_fwd(*args, True, True, cfg)
        return (y, h, hsave), scan_bwd(dy, dh, *args[:8], hsave, True, cfg)

    (fwd, grads) = both()
    launches = len(seen)
    monkeypatch.setattr(launch, "WHOLE_TILES", False)
    (fwd_m, grads_m) = both()
    assert seen == [True] * launches + [False] * launches and launches == (4 if n_segs > 1 else 2)
    for name, a, b in zip(("output", "final state", "checkpoints", *(f"gradient of `{k}`" for k in NAMES)),
                          (*fwd, *grads), (*fwd_m, *grads_m)):  # fmt: skip
        if DEVICE == "cpu":  # the interpreter runs the same float32 operations in the same order
            assert torch.equal(a, b), f"{name}: the unmasked loop differs from the masked one"
        else:  # two compiled kernels (contractions may differ) and ∂B, ∂C added atomically in any order
            assert_close(a, b.double(), 1e-6, f"{name}: unmasked against masked loop")
    ref_in = {k: inp[k].detach().cpu().double().requires_grad_(True) for k in NAMES}
    y_ref, h_ref = selective_scan_reference(**ref_in, delta_softplus=True, return_final_state=True)
    assert_close(fwd[0].cpu(), y_ref, 1e-4, "output")
    assert_close(fwd[1].cpu(), h_ref, 1e-4, "final state")
    g_ref = torch.autograd.grad((y_ref * dy.cpu().double()).sum() + (h_ref * dh.cpu().double()).sum(),
                                [ref_in[k] for k in NAMES])  # fmt: skip
    for name, g, gr in zip(NAMES, grads, g_ref):
        assert_close(g.cpu(), gr, 1e-4, f"gradient of `{name}`")


def test_local_pieces_rule():
    """The local passes' pieces per segment: about the asked programs per multiprocessor (one on the
    CPU), never pieces under 64 steps nor more than one carried piece per 12 steps of a segment."""
    from ssmkit.ops.scan.triton_launch import _pieces

    cpu = torch.device("cpu")
    assert _pieces(4096, 2, 1, 12, cpu) == 12  # 2048-step segments: 12 pieces of 171 steps
    assert _pieces(4096, 2, 4, 12, cpu) == 3
    assert _pieces(4096, 8, 1, 160, cpu) == 6  # 23 asked; 7 later segments x 6 pieces <= 512 / 12
    assert _pieces(1024, 2, 1, 160, cpu) == 8  # 160 asked; pieces of 64 steps
    assert _pieces(4096, 4, 64, 12, cpu) == 1


def test_backward_segments_rule(monkeypatch):
    """On a GPU of 132 multiprocessors (waves of 8 x 132 = 1056 backward programs) the backward takes the fewest
    segments whose programs fill k = 1, 2, ... waves to at least k - 0.15: B=8 D=2048 (512 programs of 32
    channels) 2 segments, 0.97 waves; B=16 D=1536 (768) neither 1 (0.73 waves) nor 2 (1.45) but 4 (2.9); one
    sequence at D=4096 8, at D=1536 22; a batch that fills a wave alone, one segment. Asked counts are kept, and
    short sequences cap the count (segments of at least 4 checkpoint spans)."""
    import dataclasses
    import types

    from ssmkit.ops.scan import triton_launch

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(multi_processor_count=132))
    gpu = torch.device("cuda")
    cfg = triton_launch.default_config(16, torch.bfloat16)

    def segs(b, L, D, c=cfg):
        return triton_launch._backward_split(L, b * math.ceil(D / c.bwd_block_d), c, gpu)[0]

    assert [segs(8, 4096, 2048), segs(16, 2048, 1536), segs(2, 8192, 4096)] == [2, 4, 4]
    assert [segs(1, 65536, 4096), segs(1, 65536, 1536), segs(32, 1024, 1024)] == [8, 22, 1]
    assert segs(8, 4096, 2048, dataclasses.replace(cfg, bwd_n_segs=6)) == 6
    assert segs(1, 64, 64) == 4  # 64 steps: at most 64 // (4 x 4) segments


def test_forward_lanes_rule(monkeypatch):
    """On a GPU of 132 multiprocessors the N = 16 forward takes two lanes per channel from ~6 warps per
    multiprocessor in one pass (B=8 D=2048: 1024 warps), one lane below (B=2 D=4096: 512); N = 8 never.
    Registers are capped at 168 where 4 programs per SM would not fit in one wave; else at 204 (184 saving
    checkpoints)."""
    import types

    from ssmkit.ops.scan import triton_launch

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(multi_processor_count=132))
    gpu = torch.device("cuda")
    assert triton_launch.forward_config(16, 8, 2048, gpu).lanes == 2
    assert triton_launch.forward_config(16, 4, 4096, gpu).lanes == 2
    assert triton_launch.forward_config(16, 2, 4096, gpu) == triton_launch.default_config(16)
    assert triton_launch.forward_config(8, 64, 4096, gpu) == triton_launch.default_config(8)
    # registers capped at 168 past one wave of 4 programs per SM; in one wave at 204, or 184 saving checkpoints
    assert triton_launch.forward_config(16, 8, 2048, gpu).maxnreg == 204  # 512 programs
    assert triton_launch.forward_config(16, 8, 2048, gpu, save_states=True).maxnreg == 184
    assert triton_launch.forward_config(16, 16, 1536, gpu).maxnreg == 168  # 768 programs
    assert triton_launch.forward_config(16, 16, 1536, gpu, save_states=True).maxnreg == 168


def test_register_cap():
    """The launch option that caps registers: none asked, none given; in the interpreter never (it has no
    registers to cap); on a GPU Triton's ``maxnreg``."""
    from ssmkit.ops._triton import interpret_mode, register_cap

    assert register_cap(0) == {}
    assert register_cap(168) == ({} if interpret_mode() else {"maxnreg": 168})


@triton.jit
def _exp2_fma_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + i, _exp2_fma(tl.load(x_ptr + i, mask=i < n)), mask=i < n)


def test_exp2_on_the_fma_pipe(gen):
    """``_exp2_fma`` against float64 2^x: relative error within float32's exp2 (3e-7) over the
    exponent range, and the clamps: 2^-125 below it, finite above it."""
    from ssmkit.ops._triton import LAUNCH

    inside = torch.rand(4000, generator=gen, dtype=torch.float64) * 251.0 - 125.0
    x = torch.cat([inside, torch.tensor([0.0, -0.5, 0.5, -1.0, -124.5, 125.9]), torch.tensor([-126.0, -300.0, -1e30])])
    x32 = x.float().to(DEVICE)
    y = torch.empty_like(x32)
    _exp2_fma_kernel[(triton.cdiv(x.numel(), 1024),)](x32, y, x.numel(), BLOCK=1024, **LAUNCH)
    y = y.cpu().double()
    n_in = inside.numel() + 6
    rel = ((y[:n_in] - torch.exp2(x32.cpu().double()[:n_in])) / torch.exp2(x32.cpu().double()[:n_in])).abs().max()
    assert rel < 3e-7, f"max relative error {rel:.2e}"
    assert (y[n_in:] > 0).all() and (y[n_in:] < 2.0**-124).all(), y[n_in:]


def test_no_grad_saves_nothing(gen):
    """Without autograd the forward keeps no states and gives the same output."""
    inp = make_inputs(gen, L=9, D=5, N=3)
    with torch.no_grad():
        y0 = selective_scan(**inp, delta_softplus=True, backend="triton")
    y1 = selective_scan(**inp, delta_softplus=True, backend="triton")
    assert torch.equal(y0, y1.detach())
    _, _, hsave = torch.ops.ssmkit.selective_scan_fwd(*[inp[k].detach() for k in NAMES], True, False)
    assert hsave.numel() == 0


def test_float64_is_refused(gen):
    inp = make_inputs(gen, L=4, D=3, N=2)
    with pytest.raises(BackendUnavailableError, match="selective_scan: backend 'triton' .*got float64"):
        selective_scan(**{**inp, "u": inp["u"].detach().double()}, backend="triton")


def test_config_validation():
    from ssmkit.ops.scan.triton_launch import ScanKernelConfig

    with pytest.raises(ValueError, match="save_every=6 must be a multiple of bwd_chunk, and a multiple or a divisor"):
        ScanKernelConfig(block_d=32, chunk=4, bwd_block_d=32, bwd_chunk=2, save_every=6)
    with pytest.raises(ValueError, match="save_every=2 must be a multiple of bwd_chunk"):
        ScanKernelConfig(block_d=32, chunk=8, bwd_block_d=32, bwd_chunk=4, save_every=2)
    ScanKernelConfig(block_d=32, chunk=8, bwd_block_d=32, bwd_chunk=2, save_every=4)  # checkpoints inside chunks


def test_table_entry_and_cpu_reason(monkeypatch):
    assert "triton" in SCAN_BACKENDS.impls
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = triton_unavailable_reason(torch.device("cpu"))
    assert reason is not None and "TRITON_INTERPRET=1" in reason


def test_custom_op_compiles_fullgraph(gen):
    """The custom ops (fake implementation + autograd formula) trace without graph breaks."""
    inp = make_inputs(gen, L=6, D=4, N=2)

    def f(u, delta, A, B, C, D, z, delta_bias, initial_state):
        y, h = selective_scan(u, delta, A, B, C, D, z, delta_bias, True, initial_state, True, backend="triton")
        return y.sum() + h.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = [inp[k] for k in NAMES]
    out = compiled(*args)
    g = torch.autograd.grad(out, args)
    out_e = f(*args)
    g_e = torch.autograd.grad(out_e, args)
    assert math.isclose(out.item(), out_e.item(), rel_tol=1e-6)
    for a, b in zip(g, g_e):
        assert_close(a, b, 1e-6)


def test_custom_ops_opcheck(gen):
    """Schema, autograd registration and fake (meta) outputs matching the real ones, strides included."""
    from ssmkit.ops.scan.triton_launch import scan_fwd

    inp = make_inputs(gen, L=9, D=6, N=3)
    args = tuple(inp[k] for k in NAMES) + (True, True)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.ssmkit.selective_scan_fwd.default, args, test_utils=utils)
    plain = [inp[k].detach() for k in NAMES]
    y, h, hsave = scan_fwd(*plain, True, True)
    bwd_args = (torch.randn_like(y), torch.randn_like(h), *plain[:8], hsave, True)
    torch.library.opcheck(torch.ops.ssmkit.selective_scan_bwd.default, bwd_args, test_utils=utils[::2])
