"""GPU: greedy decoding at batch 1, ssmkit (eager and through a CUDA graph) against mamba_ssm (cg off and on).

    MAMBA_SRC=/tmp/mb/mamba_ssm-2.3.2.post1 python3 benchmarks/generate_gpu.py [--out DIR]
        [--models mamba-130m mamba2-130m mamba-1.4b] [--new-tokens 256] [--prompt-len 16]

For each model shape, a random-weight ``MambaLMHeadModel`` of mamba_ssm (bfloat16, built from its source tree:
``from_mamba_source``; its CUDA scan built by ``gpu_setup_mamba.sh``) is saved and loaded into ssmkit
(``ssmkit.io.load_pretrained``), so both decode the same weights in this process. Checks: the relative
error between their last-position logits after the prompt, how many of the greedy tokens agree, and
ssmkit's graphed tokens equal to its eager ones. Decode rate = new tokens / (time to generate them - time
to generate one, i.e. the prefill), median of ``ROUNDS``; every timed call runs after a warm-up call of the
same length (mamba_ssm and ssmkit both keep their captured graphs between calls; the first call's capture
is given separately). "replay" is the GPU time of one graphed step (CUDA events around back-to-back
replays), the floor of the graphed rate. Without MAMBA_SRC, ssmkit alone is timed on the same shapes.
Writes ``generate_gpu.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(__file__))
import torch  # noqa: E402
from _gpu_bench import from_mamba_source, table_report  # noqa: E402

import ssmkit  # noqa: E402
from ssmkit.generation import graphed_step, prefill, release_graphs  # noqa: E402
from ssmkit.io import load_pretrained  # noqa: E402
from ssmkit.models import LM, ModelConfig  # noqa: E402
from ssmkit.models.mixer_configs import Mamba2Config, MambaConfig  # noqa: E402

ROUNDS = 3
VOCAB = 50277
# name -> (d_model, n_layer, mamba_ssm's layer, vocabulary padding): the public checkpoints' shapes
SHAPES = {
    "mamba-130m": (768, 24, "Mamba1", 8),
    "mamba2-130m": (768, 24, "Mamba2", 16),
    "mamba-370m": (1024, 48, "Mamba1", 8),
    "mamba-1.4b": (2048, 48, "Mamba1", 8),
    "mamba-2.8b": (2560, 64, "Mamba1", 8),
}


def _stub_transformers() -> None:
    """mamba_ssm's generation and config helpers import a few names from transformers; where transformers
    is not installed, small stand-ins are enough (nothing here streams text or reads the Hub)."""
    try:
        import transformers  # noqa: F401
        return
    except ImportError:
        pass
    from dataclasses import dataclass

    @dataclass
    class GenerateDecoderOnlyOutput:
        sequences: torch.Tensor = None
        scores: tuple = ()

    mods = {n: types.ModuleType(n) for n in ("transformers", "transformers.generation", "transformers.utils",
                                             "transformers.utils.hub")}  # fmt: skip
    mods["transformers.generation"].GenerateDecoderOnlyOutput = GenerateDecoderOnlyOutput
    mods["transformers.generation"].TextStreamer = type("TextStreamer", (), {})
    mods["transformers.utils"].WEIGHTS_NAME, mods["transformers.utils"].CONFIG_NAME = "pytorch_model.bin", "config.json"
    mods["transformers.utils.hub"].cached_file = lambda *a, **k: None
    sys.modules.update(mods)


@functools.lru_cache(maxsize=None)
def _mamba_lm_class(src: str):
    _stub_transformers()
    return from_mamba_source(src, "models.mixer_seq_simple", "MambaLMHeadModel")


def mamba_model(name: str):
    """mamba_ssm's MambaLMHeadModel of this shape (random weights, bfloat16, on the GPU), or None."""
    src = os.environ.get("MAMBA_SRC")
    if not src:
        return None
    cls = _mamba_lm_class(src)
    config_cls = sys.modules["mamba_ssm.models.mixer_seq_simple"].MambaConfig
    d, n, layer, pad = SHAPES[name]
    torch.manual_seed(0)
    cfg = config_cls(d_model=d, n_layer=n, vocab_size=VOCAB, ssm_cfg={"layer": layer}, pad_vocab_size_multiple=pad)
    return cls(cfg, device="cuda", dtype=torch.bfloat16).eval()


def ssmkit_alone(name: str) -> LM:
    d, n, layer, pad = SHAPES[name]
    mixer = dict(mamba=MambaConfig(d_state=16, d_conv=4, expand=2)) if layer == "Mamba1" else \
        dict(mamba2=Mamba2Config(d_state=128, headdim=64, ngroups=1, chunk_size=256))
    cfg = ModelConfig(layers=("M" if layer == "Mamba1" else "m") * n, d_model=d, vocab_size=VOCAB,
                      pad_vocab_size_multiple=pad, **mixer)  # fmt: skip
    torch.manual_seed(0)
    return LM(cfg).to(device="cuda", dtype=torch.bfloat16).eval()


def _timed(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def decode_rate(generate_n, n: int) -> float:
    """Tokens/s of decoding: n / (time(n + 1 tokens) - time(1 token)), median over ROUNDS."""
    generate_n(n + 1)  # warm-up at the longest length (compiles, captures)
    generate_n(1)
    per_token = []
    for _ in range(ROUNDS):
        per_token.append((_timed(lambda: generate_n(n + 1)) - _timed(lambda: generate_n(1))) / n)
    return 1.0 / statistics.median(per_token)


@torch.no_grad()
def replay_ms(model, prompt: torch.Tensor) -> float:
    """GPU ms of one graphed step (CUDA events around 200 back-to-back replays)."""
    logits, state = prefill(model, prompt)
    token = logits.argmax(-1)
    step = graphed_step(model, token, state)
    for _ in range(10):
        step(token)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(200):
        step(token)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 200


@torch.no_grad()
def _against_mamba(row: list, theirs, ours, prompt: torch.Tensor, graph_tokens: torch.Tensor, n: int,
                   r_graph: float) -> None:  # fmt: skip
    """mamba_ssm's columns of ``row``: its rates, the logits' error and the greedy tokens' agreement."""
    L = prompt.shape[1]

    def theirs_n(k, cg, **kw):  # (a tensor of ids; with return_dict_in_generate, an output with scores)
        return theirs.generate(prompt, max_length=L + k, cg=cg, top_k=1, **kw)

    # the logits after the prompt, from its generation path (its plain forward needs the causal_conv1d package)
    logits_theirs = theirs_n(1, False, output_scores=True, return_dict_in_generate=True).scores[0][:, :VOCAB].float()
    logits_ours = ours(prompt, num_last_tokens=1)[0][:, -1].float()
    err = ((logits_ours - logits_theirs).norm() / logits_theirs.norm()).item()
    t_tokens, o_tokens = theirs_n(n, True)[0, L:], graph_tokens[0, L:]
    agree = n if torch.equal(t_tokens, o_tokens) else int((t_tokens != o_tokens).int().argmax())
    r_t_eager, r_t_graph = decode_rate(lambda k: theirs_n(k, False), n), decode_rate(lambda k: theirs_n(k, True), n)
    row[1], row[2] = f"{r_t_eager:.0f}", f"{r_t_graph:.0f}"
    row[5] = f"{r_graph / max(r_t_eager, r_t_graph):.2f}x"
    row[8], row[9] = f"{err:.1e}", f"{agree}/{n}"


@torch.no_grad()
def run_model(name: str, n: int, prompt_len: int) -> list:
    theirs = mamba_model(name)
    if theirs is not None:
        with tempfile.TemporaryDirectory() as tmp:
            theirs.save_pretrained(tmp)
            ours = load_pretrained(tmp, dtype=torch.bfloat16, device="cuda")
    else:
        ours = ssmkit_alone(name)
    g = torch.Generator(device="cuda").manual_seed(1)
    prompt = torch.randint(0, VOCAB, (1, prompt_len), device="cuda", generator=g)

    def ours_n(k, graph):
        return ssmkit.generate(ours, prompt, max_new_tokens=k, cuda_graph=graph)

    release_graphs(ours)
    t_first = _timed(lambda: ours_n(n + 1, True))
    capture_ms = (t_first - _timed(lambda: ours_n(n + 1, True))) * 1e3
    eager_tokens, graph_tokens = ours_n(n, False), ours_n(n, True)
    same = torch.equal(eager_tokens, graph_tokens)
    r_eager, r_graph = decode_rate(lambda k: ours_n(k, False), n), decode_rate(lambda k: ours_n(k, True), n)
    rep = replay_ms(ours, prompt)
    row = [name, "", "", f"{r_eager:.0f}", f"{r_graph:.0f}", "", f"{rep:.3f}", f"{capture_ms:.0f}", "", "",
           "yes" if same else "NO"]  # fmt: skip
    if theirs is not None:
        try:
            _against_mamba(row, theirs, ours, prompt, graph_tokens, n, r_graph)
        except Exception as e:  # (ssmkit's figures stay)
            print(f"{name}: mamba_ssm FAILED {type(e).__name__}: {str(e)[:400]}", flush=True)
            row[1] = f"failed: {type(e).__name__}"
    release_graphs(ours)
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--models", nargs="+", default=["mamba-130m", "mamba2-130m", "mamba-1.4b"], choices=list(SHAPES))
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=16)
    a = ap.parse_args()
    head = ["model (bf16, batch 1)", "mamba_ssm tok/s", "mamba_ssm cg tok/s", "ssmkit eager tok/s",
            "ssmkit graph tok/s", "ssmkit graph / mamba_ssm best", "graph replay ms", "first-call capture ms",
            "logits rel. err", "greedy tokens agreeing", "graph = eager tokens"]  # fmt: skip
    rows = []
    for name in a.models:
        try:
            rows.append(run_model(name, a.new_tokens, a.prompt_len))
        except Exception as e:  # (one model's failure keeps the others' rows)
            print(f"{name}: FAILED {type(e).__name__}: {str(e)[:400]}", flush=True)
            rows.append([name] + [f"failed: {type(e).__name__}"] + [""] * 9)
        torch.cuda.empty_cache()
    title = f"Greedy decoding at batch 1, {a.new_tokens} new tokens after {a.prompt_len}"
    print(table_report(a.out, "generate_gpu", title, head, rows))


if __name__ == "__main__":
    main()
