"""The fused CPU block steps' plans (``SSMMixer._block_plan``): kept between tokens, made anew when what they were
made from changes, for Mamba and Mamba-2 blocks."""

import copy
import io

import pytest
import torch
from torch import nn

from decode_helpers import count_calls, steps
from numerics import TOL, assert_close
import ssmkit.layers.mamba as mamba_layer
import ssmkit.layers.mamba2 as mamba2_layer
from ssmkit.models import LM, ModelConfig
from ssmkit.models.mixer_configs import Mamba2Config
from ssmkit.ops.decode import mamba2_block_available, mamba_block_available

if not (mamba_block_available() and mamba2_block_available()):
    pytest.skip("the fused steps cannot be built here", allow_module_level=True)

VOCAB = 53
KERNELS = {"M": (mamba_layer, "mamba_block_step_cpu"), "m": (mamba2_layer, "mamba2_block_step_cpu")}


def lm_pair(gen, letter):
    """A float32 LM of three blocks and the same weights in float64 on the PyTorch step."""
    config = dict(layers=letter * 3, d_model=32, vocab_size=VOCAB, mamba2=Mamba2Config(headdim=16, d_state=8))
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
    lm = LM(ModelConfig(**config)).eval()
    ref = LM(ModelConfig(**config, backend="torch")).double().eval()
    ref.load_state_dict({k: v.double() for k, v in lm.state_dict().items()})
    return lm, ref


def change(lm, ref, edit):
    """Apply ``edit(mixer)`` to the first block's mixer of both models (the same change)."""
    with torch.no_grad():
        edit(lm.backbone.layers[0].mixer)
        edit(ref.backbone.layers[0].mixer)


@pytest.mark.parametrize("letter", ["M", "m"])
def test_plans_follow_changes(gen, monkeypatch, letter):
    """After fused steps have made their plans: in-place updates of a projection and of D, a replaced
    projection, a block norm's epsilon and (Mamba-2) its Δ limits change the logits exactly as in the float64
    PyTorch step; a hook on a projection sends that block down the usual path, and removing it brings it back."""
    calls = count_calls(monkeypatch, *KERNELS[letter])
    lm, ref = lm_pair(gen, letter)
    ids = torch.randint(VOCAB, (4,), generator=gen)

    def check(n_fused):
        calls.clear()
        got, _ = steps(lm, ids, torch.float32)
        want, _ = steps(ref, ids, torch.float64)
        assert_close(got, want, TOL[torch.float32], "logits")
        assert len(calls) == n_fused

    check(4 * 3)
    change(lm, ref, lambda m: m.out_proj.weight.mul_(1.5))
    change(lm, ref, lambda m: m.D.add_(0.7))
    check(4 * 3)
    torch.manual_seed(0)
    new_in = nn.Linear(*reversed(lm.backbone.layers[0].mixer.in_proj.weight.shape), bias=False)
    change(lm, ref, lambda m: setattr(m, "in_proj", copy.deepcopy(new_in).to(m.in_proj.weight.dtype)))
    check(4 * 3)
    for model in (lm, ref):
        model.backbone.layers[0].norm.eps = 0.5
    if letter == "m":
        change(lm, ref, lambda m: setattr(m, "dt_limit", (0.0, 0.02)))
    check(4 * 3)
    handle = lm.backbone.layers[1].mixer.out_proj.register_forward_pre_hook(lambda *a: None)
    check(4 * 2)
    handle.remove()
    check(4 * 3)


@pytest.mark.parametrize("letter", ["M", "m"])
def test_models_with_plans_copy_and_save(gen, monkeypatch, letter):
    """A model that has decoded on the CPU (its layers holding plans: C structs of raw pointers) deep-copies and
    pickles whole; the copy and the reloaded model make their own plans and decode the same logits, fused."""
    calls = count_calls(monkeypatch, *KERNELS[letter])
    lm, _ = lm_pair(gen, letter)
    ids = torch.randint(VOCAB, (3,), generator=gen)
    want, _ = steps(lm, ids, torch.float32)
    buf = io.BytesIO()
    torch.save(lm, buf)
    buf.seek(0)
    for other in (copy.deepcopy(lm), torch.load(buf, weights_only=False)):
        calls.clear()
        got, _ = steps(other, ids, torch.float32)
        assert torch.equal(got, want) and len(calls) == 3 * 3
