"""SequenceClassifier: pooling, padding on either side, bidirectional backbones, errors."""

from __future__ import annotations

import pytest
import torch

from model_helpers import one_thread, random_ids  # noqa: F401
from numerics import TOL, assert_close
from ssmkit.models.backbone import Backbone
from ssmkit.models.classifier import SequenceClassifier
from ssmkit.models.config import ModelConfig

TOL32 = TOL[torch.float32]


def _classifier(name: str, pooling: str, bidirectional: bool) -> SequenceClassifier:
    return SequenceClassifier(ModelConfig.preset(name, bidirectional=bidirectional), 5, pooling=pooling).eval()


@pytest.mark.parametrize("name, pooling, bidirectional", [
    ("s4d-tiny", "mean", True), ("hyena-tiny", "mean", True), ("transformer-tiny", "last", True),
    ("s4-tiny", "last", True), ("mamba-tiny", "last", False), ("hybrid-tiny", "mean", False),
])
@torch.no_grad()
def test_padding_on_either_side_changes_nothing(name, pooling, bidirectional, gen):
    model = _classifier(name, pooling, bidirectional)
    rows = [random_ids(gen, 21), random_ids(gen, 12)]
    alone = torch.cat([model(r[None]) for r in rows])  # (2, 5)
    sides = ("left", "right") if bidirectional else ("left",)  # a causal model's "last" needs left padding
    for side in sides:
        ids = random_ids(gen, 2, 21)  # random padding tokens
        mask = torch.zeros(2, 21, dtype=torch.bool)
        for b, r in enumerate(rows):
            span = slice(21 - len(r), 21) if side == "left" else slice(0, len(r))
            ids[b, span], mask[b, span] = r, True
        out = model(ids, mask=mask)
        assert out.shape == (2, 5)
        assert_close(out, alone, TOL32, f"{name} {pooling}, {side} padding")


@torch.no_grad()
def test_bidirectional_backbone_sees_the_future(gen):
    for bidirectional in (False, True):
        backbone = Backbone(ModelConfig.preset("s4d-tiny", bidirectional=bidirectional)).eval()
        x = torch.randn(1, 16, 64, generator=gen)
        x2 = x.clone()
        x2[:, 10:] = torch.randn(1, 6, 64, generator=gen)
        y, _ = backbone(x)
        y2, _ = backbone(x2)
        changed = not torch.allclose(y[:, :10], y2[:, :10], atol=1e-6)
        assert changed == bidirectional


def test_pooling_functions(gen):
    from ssmkit.models.classifier import last_real, masked_mean

    h = torch.randn(2, 6, 3, generator=gen)
    mask = torch.tensor([[False, True, True, True, False, False], [True] * 6])
    assert_close(masked_mean(h, mask)[0], h[0, 1:4].mean(0), 1e-6, "masked mean")
    assert torch.equal(last_real(h, mask), torch.stack([h[0, 3], h[1, 5]]))
    h[0, 0] = float("nan")  # a padded NaN must not reach the pooled vector
    assert torch.isfinite(masked_mean(h, mask)).all()


def test_inputs_embeds_and_gradients(gen):
    model = _classifier("s4d-tiny", "mean", True)
    ids = random_ids(gen, 2, 9)
    out = model(ids)
    assert_close(model(inputs_embeds=model.embedding(ids)), out, TOL32, "inputs_embeds")
    torch.nn.functional.cross_entropy(out, torch.tensor([1, 3])).backward()
    assert model.embedding.weight.grad.norm() > 0 and model.head.weight.grad.norm() > 0


def test_classifier_errors(gen):
    config = ModelConfig.preset("s4d-tiny", bidirectional=True)
    with pytest.raises(ValueError, match=r"`pooling` must be one of \['mean', 'last'\], got 'max'"):
        SequenceClassifier(config, 3, pooling="max")
    with pytest.raises(ValueError, match=r"`n_classes` must be >= 1, got 0"):
        SequenceClassifier(config, 0)
    model = SequenceClassifier(config, 3)
    ids = random_ids(gen, 2, 4)
    with pytest.raises(ValueError, match=r"give exactly one of `input_ids` \(B, L\) or `inputs_embeds`"):
        model()
    with pytest.raises(ValueError, match=r"`mask` has a row with no real token"):
        model(ids, mask=torch.tensor([[True] * 4, [False] * 4]))
    with pytest.raises(ValueError, match=r"`mask` expected shape \(B, L\) = \(2, 4\), got \(2, 3\)"):
        model(ids, mask=torch.ones(2, 3, dtype=torch.bool))
