"""GPU probe of a measured, not kept change: a Mamba block's decode step in four Triton kernels, on and off in one
process (graph replay ms, tokens/s, greedy tokens and step logits against the unfused step). Needs
``gpu_mamba_block_step.patch`` applied; from the repository root:

    git apply benchmarks/attempts/gpu_mamba_block_step.patch
    python3 benchmarks/attempts/gpu_mamba_block_step_probe.py

Results: BENCHMARKS.md, generation section (thirty-sixth session).
"""
import sys
sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")
import torch
import ssmkit
import ssmkit.layers.mamba as mamba_layer
from ssmkit.generation.graphs import release_graphs
from generate_gpu import ssmkit_alone, replay_ms, VOCAB, decode_rate

real = mamba_layer.gpu_step_available
for name in ("mamba-130m", "mamba-1.4b"):
    lm = ssmkit_alone(name)
    g = torch.Generator(device="cuda").manual_seed(1)
    prompt = torch.randint(0, VOCAB, (1, 16), device="cuda", generator=g)
    toks, res = {}, {}
    for rnd in range(2):
        for on in (True, False):
            mamba_layer.gpu_step_available = real if on else (lambda: False)
            release_graphs(lm)
            toks[on] = ssmkit.generate(lm, prompt, max_new_tokens=128, cuda_graph=True)
            rep = replay_ms(lm, prompt)
            rate = decode_rate(lambda k, lm=lm: ssmkit.generate(lm, prompt, max_new_tokens=k, cuda_graph=True), 256)
            print(f"{name} fused={on} round {rnd}: replay {rep:.3f} ms, {rate:.0f} tok/s", flush=True)
    with torch.no_grad():
        st = {}
        for on in (True, False):
            mamba_layer.gpu_step_available = real if on else (lambda: False)
            state = lm.init_state(1)
            outs = []
            for t in range(16):
                logits, state = lm.step(prompt[:, t], state)
                outs.append(logits.float())
            st[on] = torch.cat(outs)
        err = ((st[True] - st[False]).norm() / st[False].norm()).item()
    a, b = toks[True][0, 16:], toks[False][0, 16:]
    agree = 128 if torch.equal(a, b) else int((a != b).int().argmax())
    print(f"{name}: step logits fused vs unfused rel err {err:.2e}; greedy tokens agreeing {agree}/128", flush=True)
    mamba_layer.gpu_step_available = real
    release_graphs(lm)
    del lm
    torch.cuda.empty_cache()
