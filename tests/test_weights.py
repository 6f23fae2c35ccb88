"""The shipped pretrained weights: loadable, consistent with their metadata, deterministic, accurate."""
from __future__ import annotations

import pytest
import torch

from fer_edge.checkpoint import load_checkpoint
from fer_edge.constants import LABELS
from fer_edge.models import count_macs, count_params
from fer_edge.weights import DEFAULT_MODEL, PRETRAINED, resolve_checkpoint

SHIPPED = sorted(PRETRAINED)


def test_small_and_nano_are_shipped_and_small_is_default():
    assert {"small", "nano"} <= set(PRETRAINED)
    assert DEFAULT_MODEL == "small" and resolve_checkpoint(None) == PRETRAINED["small"].path
    assert PRETRAINED["small"].params <= 1_000_000 and PRETRAINED["nano"].params <= 100_000


@pytest.mark.parametrize("name", SHIPPED)
def test_weight_loads_and_matches_its_metadata(name):
    meta = PRETRAINED[name]
    assert meta.path.stat().st_size <= 4 * 1024 * 1024
    raw = torch.load(meta.path, map_location="cpu", weights_only=True)  # no pickle code execution
    assert raw["model"] == meta.architecture
    ck = load_checkpoint(meta.path)
    model = ck.build_model()
    assert count_params(model) == meta.params and count_macs(model) == meta.macs
    assert tuple(ck.labels) == tuple(meta.labels) == LABELS
    assert (ck.normalization.mean, ck.normalization.std) == (meta.mean, meta.std)
    assert meta.recipe.startswith("fer-edge train") and meta.metrics["val_accuracy"] > 0.5
    assert ck.train_config["model"] == meta.architecture
    # the constructor defaults are stored too, so the weight survives a later change of them
    assert ck.model_kwargs == ck.resolved_model_kwargs() and ck.model_kwargs


@pytest.mark.parametrize("name", SHIPPED)
def test_weight_is_deterministic(name):
    model = load_checkpoint(PRETRAINED[name].path).build_model()
    x = torch.linspace(-2, 2, 2 * 48 * 48).reshape(2, 1, 48, 48)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b) and a.shape == (2, 7)


@pytest.mark.shared_data
def test_small_accuracy_on_real_publictest(shared_fer2013):
    """A broken preprocessing or label order cannot ship: 1,000 PublicTest images within 2 points."""
    from fer_edge.training import evaluate

    r = evaluate("small", shared_fer2013 / "fer2013.csv.gz", "PublicTest", device="cpu", limit=1000, progress=False)
    recorded = PRETRAINED["small"].metrics["val_accuracy"]
    assert r.n == 1000 and r.accuracy >= recorded - 0.02, (r.accuracy, recorded)
