"""Shared fixtures: tiny synthetic data sets in both formats, and the optional real FER2013."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fer_edge.data.synthetic import make_synthetic, write_csv, write_folder

SHARED_FER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the decoded-data cache of tests out of the user's cache dir."""
    monkeypatch.setenv("FER_EDGE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True, scope="session")
def _onnx_export_memo():
    """Export each distinct model to FP32 ONNX once per test session.

    ``torch.onnx.export`` (dynamo) takes seconds even for the tiny test models (``fp32_proto(create_model(
    "fer_nano").eval())`` timed three times: 3.4-6.7 s), and the suite exported the same few models 96 times, 262 s
    of a 760 s run (measured with a pytest plugin wrapping ``torch.onnx.export``). The memo keys on everything the
    export reads: each module's class, the model's repr and training flag, and every parameter and buffer's bytes;
    a hit returns a copy of the proto the real exporter made. A test that replaces ``torch.onnx.export`` gets the
    real call.
    """
    import hashlib

    import torch

    import fer_edge.exporters.onnx as onnx_exporter

    real, real_export = onnx_exporter.fp32_proto, torch.onnx.export
    memo: dict = {}

    def key(model) -> str:
        h = hashlib.sha256(repr(model).encode())
        h.update(repr([(type(m).__module__, type(m).__qualname__, m.training) for m in model.modules()]).encode())
        for name, t in model.state_dict().items():
            shape = t.shape
            t = t.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}:{t.dtype}:{tuple(shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def memoized(model):
        import onnx

        if torch.onnx.export is not real_export:  # the test changed the exporter: run it
            return real(model)
        k = key(model)
        if k not in memo:
            memo[k] = real(model)
        copy = onnx.ModelProto()
        copy.CopyFrom(memo[k])
        return copy

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_exporter, "fp32_proto", memoized)
        yield


def _small_png(path) -> Path:
    from PIL import Image

    from fer_edge.utils import atomic_path

    with atomic_path(path) as tmp:
        Image.new("L", (8, 8)).save(tmp, format="PNG")
    return Path(path)


@pytest.fixture(autouse=True)
def _quick_plots(request, monkeypatch):
    """Training runs and evaluations write small stand-in PNGs, unless a test is marked ``real_plots``.

    matplotlib's two training plots took 0.8 s of a 1 s tiny training run (cProfile of ``train()`` on the synthetic
    CSV, 3 epochs of 6 steps), and the suite trains about 160 times; the plots are drawn for real in the tests
    marked ``real_plots`` (a run's curves and confusion matrix, eval's plot). The stand-ins still read what the real
    plots read, so a history or confusion matrix they could not draw fails here too: with an AssertionError, the one
    error fer_edge.plotting.draw_or_warn passes on (any other is a warning, as a real plot's failure is).
    """
    if request.node.get_closest_marker("real_plots"):
        return
    import numpy as np

    import fer_edge.training.plots as plots

    def curves(history, path, title=""):
        try:
            [(r["epoch"], r["train_loss"], r["train_accuracy"], r["lr"]) for r in history]
            [(r["val_accuracy"], r["val_macro_f1"]) for r in history if r.get("val_loss") is not None]
        except (KeyError, TypeError) as e:
            raise AssertionError(f"a history plot_curves could not draw: {e!r}") from e
        return _small_png(path)

    def confusion(cm, labels, path, title=""):
        cm = np.asarray(cm)
        if cm.shape != (len(labels), len(labels)):
            raise AssertionError(f"confusion matrix {cm.shape} for {len(labels)} labels")
        return _small_png(path)

    monkeypatch.setattr(plots, "plot_curves", curves)
    monkeypatch.setattr(plots, "plot_confusion", confusion)


@pytest.fixture(scope="session")
def synthetic_arrays():
    return {"Training": make_synthetic(40, seed=0), "PublicTest": make_synthetic(12, seed=1)}


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory, synthetic_arrays) -> Path:
    """A gzipped Kaggle-format CSV with Training (280 rows) and PublicTest (84 rows)."""
    return write_csv(tmp_path_factory.mktemp("csv") / "fer2013.csv.gz", synthetic_arrays)


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory, synthetic_arrays) -> Path:
    """An image-folder data set: root/{train,val}/<class>/*.png."""
    return write_folder(
        tmp_path_factory.mktemp("folder"),
        {"train": synthetic_arrays["Training"], "val": synthetic_arrays["PublicTest"]},
    )


@pytest.fixture(scope="session")
def shared_fer2013() -> Path:
    """The real FER2013 beside the checkout; tests using it skip when it is absent."""
    root = Path(os.environ.get("FER_EDGE_SHARED_DATA", SHARED_FER))
    if not (root / "fer2013.csv.gz").is_file():
        pytest.skip(f"real FER2013 not found at {root}")
    return root


def _train_tiny(model_name: str, arrays, steps: int = 40, seed: int = 0):
    """A few Adam steps on synthetic data: enough for confident, non-random logits."""
    import torch

    from fer_edge.models import create_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # measured: 3x faster than 2 threads for this tiny model on a loaded 2-core box
    torch.manual_seed(seed)
    images, labels = arrays
    x = torch.from_numpy(images).float().unsqueeze(1) / 255.0
    x = (x - 0.5) / 0.25
    y = torch.from_numpy(labels)
    model = create_model(model_name)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, synthetic_arrays, synthetic_csv) -> Path:
    """A fer-edge checkpoint of ``fer_nano`` briefly trained on the synthetic CSV's Training split."""
    from fer_edge.checkpoint import save_checkpoint
    from fer_edge.constants import LABELS

    model = _train_tiny("fer_nano", synthetic_arrays["Training"])
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(
        path,
        {
            "model": "fer_nano",
            "model_kwargs": {},
            "state_dict": model.state_dict(),
            "labels": list(LABELS),
            "normalization": {"mean": 0.5, "std": 0.25},
            "train_config": {"data": str(synthetic_csv), "model": "fer_nano"},
            "metrics": {},
            "data": {"source": str(synthetic_csv), "split": "Training"},
            "epoch": 1,
        },
    )
    return path
