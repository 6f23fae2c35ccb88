"""Training and eval plots: drawn without pyplot (the caller's backend untouched), readable (markers, whole epochs,
labelled colour bar, n/a for a class with no images, whole titles), and never why eval or training fails."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fer_edge.cli import app
from fer_edge.constants import LABELS
from fer_edge.errors import FerEdgeError, PlotError

runner = CliRunner()


def _history(epochs):
    return [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.1 * e, "val_loss": 1.1 / e,
             "val_accuracy": 0.1 * e, "val_macro_f1": 0.05 * e, "lr": 1e-3} for e in epochs]


def _no_matplotlib(monkeypatch):
    """matplotlib as a broken install or a bad MPLBACKEND left it: every plot fails with PlotError."""
    import fer_edge.plotting

    def broken():
        raise PlotError("matplotlib cannot be imported (ValueError: 'nonsense' is not a valid value for backend)")

    monkeypatch.setattr(fer_edge.plotting, "_matplotlib", broken)


@pytest.mark.real_plots
def test_eval_keeps_its_metrics_when_the_plot_fails(tiny_checkpoint, synthetic_csv, tmp_path, monkeypatch):
    """eval computed the accuracy, then died in the plot's ``import matplotlib`` without printing it (--json too);
    the plot is a warning now, the PNG null, and an earlier PNG of the same name is removed, not passed off as
    this run's."""
    args = ["eval", "--model", str(tiny_checkpoint), "--data", str(synthetic_csv), "--split", "PublicTest",
            "--device", "cpu", "--out", str(tmp_path)]
    drawn = runner.invoke(app, args + ["--json"])
    assert drawn.exit_code == 0, drawn.output
    png = json.loads(drawn.stdout)["confusion_png"]
    assert png and (tmp_path / png.rsplit("/", 1)[-1]).is_file()

    _no_matplotlib(monkeypatch)
    r = runner.invoke(app, args + ["--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["accuracy"] == json.loads(drawn.stdout)["accuracy"] and got["n"] == 84
    assert got["confusion_png"] is None and not list(tmp_path.glob("confusion_*.png"))
    assert "warning: plot" in r.stderr and "not drawn" in r.stderr and "removed" in r.stderr

    r = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert f"accuracy {got['accuracy']:.4f}" in r.stdout and "confusion matrix: not drawn" in r.stdout
    assert "warning: plot" in r.stderr


def test_eval_refuses_a_folder_where_its_plot_goes_before_evaluating(tiny_checkpoint, synthetic_csv, tmp_path,
                                                                     monkeypatch):
    """A folder named like the confusion PNG made eval compute every metric, then exit 1 ("is a folder")."""
    from fer_edge.training import evaluate

    png = evaluate(tiny_checkpoint, synthetic_csv, "PublicTest", device="cpu", out_dir=tmp_path,
                   progress=False).confusion_png
    (tmp_path / png.rsplit("/", 1)[-1]).unlink()
    (tmp_path / png.rsplit("/", 1)[-1]).mkdir()

    import fer_edge.training.trainer as trainer

    def predict(*a, **k):
        raise AssertionError("evaluated before the folder was refused")

    monkeypatch.setattr(trainer, "predict_logits", predict)
    with pytest.raises(FerEdgeError, match="is a folder"):
        evaluate(tiny_checkpoint, synthetic_csv, "PublicTest", device="cpu", out_dir=tmp_path, progress=False)


@pytest.mark.real_plots
def test_training_goes_on_when_its_plots_fail(synthetic_csv, tmp_path, monkeypatch, capsys):
    """Training stopped after epoch 1 inside the per-epoch confusion plot; now each plot warns once and the run
    finishes with its metrics and checkpoints."""
    from fer_edge.training import TrainConfig, train

    _no_matplotlib(monkeypatch)
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(synthetic_csv), model="simple_cnn", out=str(out), epochs=2, batch_size=32, lr=3e-3,
                      seed=0, device="cpu", augment="light", max_steps_per_epoch=2)
    res = train(cfg, progress=False)
    assert res.epochs_run == 2 and len(res.history) == 2
    for name in ("best.pt", "last.pt", "metrics.json", "history.csv", "per_class.csv"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["finished"] is True
    assert not (out / "curves.png").exists() and not (out / "confusion_matrix.png").exists()
    err = capsys.readouterr().err
    assert err.count("confusion_matrix.png not drawn") == 1 and err.count("curves.png not drawn") == 1, err


@pytest.mark.real_plots
def test_plotting_leaves_the_callers_backend_alone(tmp_path):
    """plots.py called matplotlib.use("Agg"): drawing a run's plots changed a notebook's backend."""
    import matplotlib

    from fer_edge.training.plots import plot_confusion, plot_curves

    before = matplotlib.rcParams._get_backend_or_none()
    matplotlib.use("svg")
    try:
        plot_curves(_history([1, 2]), tmp_path / "curves.png")
        plot_confusion(np.eye(len(LABELS), dtype=int), list(LABELS), tmp_path / "cm.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before or "agg")
    assert (tmp_path / "curves.png").stat().st_size > 1000 and (tmp_path / "cm.png").stat().st_size > 1000


def _colour_pixels(fig, ax) -> int:
    """Coloured (not grey: lines and markers, not text, spines or grid) pixels in ``ax``, outside its legend."""
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    h = rgb.shape[0]
    mask = np.zeros(rgb.shape[:2], dtype=bool)
    box = ax.get_window_extent()
    mask[h - int(box.y1):h - int(box.y0), int(box.x0):int(box.x1)] = True
    if ax.get_legend() is not None:
        box = ax.get_legend().get_window_extent()
        mask[h - int(box.y1) - 1:h - int(box.y0) + 1, int(box.x0) - 1:int(box.x1) + 1] = False
    colour = rgb.max(-1) - rgb.min(-1) > 60
    return int((colour & mask).sum())


@pytest.mark.real_plots
def test_one_epoch_curves_show_their_points_at_epoch_1():
    """A one-epoch run's curves.png was blank (one point draws no line) with ticks 0.945..1.050."""
    from fer_edge.training.plots import curves_figure

    fig = curves_figure(_history([1]), title="nano")
    for ax in fig.axes:
        assert _colour_pixels(fig, ax) > 20, ax.get_title()
        lo, hi = ax.get_xlim()
        assert [t for t in ax.get_xticks() if lo <= t <= hi] == [1.0], ax.get_title()


@pytest.mark.real_plots
def test_confusion_matrix_says_what_its_numbers_are():
    """The colour bar had no label, the cells no key, and a class with no images showed shares of 0.00."""
    from fer_edge.training.plots import confusion_figure

    cm = np.arange(49).reshape(7, 7) % 5
    cm[1] = 0  # disgust: no images
    fig = confusion_figure(cm, list(LABELS), title="fer_nano on PublicTest: accuracy 0.5000")
    ax, bar = fig.axes
    cells = [t.get_text() for t in ax.texts]
    assert cells[7:14] == ["n/a"] * 7
    assert "n/a" not in cells[:7] + cells[14:] and cells[0] == "0.00\n0" and cells[1] == f"{1 / 11:.2f}\n1"
    assert "row-normalised" in bar.get_ylabel()
    assert "fer_nano on PublicTest" in ax.get_title() and "share of its true class" in ax.get_title()


@pytest.mark.real_plots
@pytest.mark.parametrize("which", ["curves", "confusion"])
def test_long_titles_are_wrapped_inside_the_image(which):
    """An ensemble of five models with --tta lost the end of its title ("...accuracy 0.64") off the image."""
    from fer_edge.training.plots import confusion_figure, curves_figure

    title = ("ensemble of fer_nano, fer_small, fer_base, fer_large, fer_xlarge, fer_huge on PublicTest (flip TTA): "
             "accuracy 0.6412")
    if which == "curves":
        fig = curves_figure(_history([1, 2]), title=title * 2)
        text = fig._suptitle
    else:
        fig = confusion_figure(np.ones((7, 7), dtype=int), list(LABELS), title=title)
        text = fig.axes[0].title
    fig.canvas.draw()
    box, page = text.get_window_extent(), fig.bbox
    assert "accuracy 0.6412" in text.get_text()
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, (box, page)


@pytest.mark.parametrize("error", [ImportError("no fontTools"), OverflowError("(34, 'Numerical result out of range')"),
                                   TypeError("a bug in a plot")])
def test_any_plot_error_is_a_warning_but_a_tests_assertion_is_not(tmp_path, error):
    """QA: a broken matplotlib install (its Agg backend failing to import) or a tick computation overflowing on a
    huge latency raised past draw_or_warn, and a bench lost every report file it had measured."""
    from fer_edge.plotting import draw_or_warn

    warnings = []

    def draw():
        raise error

    assert draw_or_warn(draw, tmp_path / "p.png", warnings.append) is None
    assert len(warnings) == 1 and type(error).__name__ in warnings[0] and str(error) in warnings[0]

    def checked():
        raise AssertionError("a test's check")

    with pytest.raises(AssertionError, match="a test's check"):
        draw_or_warn(checked, tmp_path / "p.png", warnings.append)


def test_a_matplotlib_that_cannot_draw_is_a_plot_error(monkeypatch):
    import sys

    from fer_edge.plotting import subplots

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails: a broken install
    with pytest.raises(PlotError, match="matplotlib cannot draw here"):
        subplots()


def test_the_users_mplbackend_still_applies_to_their_own_figures_after_a_fer_edge_plot(tmp_path):
    """QA: MPLBACKEND was set aside while fer-edge imported matplotlib first, so the user's pyplot then got Agg."""
    import os
    import subprocess
    import sys

    code = ("from fer_edge.plotting import save_png, subplots\n"
            "fig, ax = subplots()\nsave_png(fig, sys.argv[1])\n"
            "import matplotlib.pyplot as plt\nprint(plt.get_backend())")
    env = {**os.environ, "MPLBACKEND": "svg"}
    r = subprocess.run([sys.executable, "-c", "import sys\n" + code, str(tmp_path / "p.png")], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().lower() == "svg" and (tmp_path / "p.png").is_file()
    env["MPLBACKEND"] = "nonsense"  # one this environment lacks: fer-edge still draws
    r = subprocess.run([sys.executable, "-c", "import sys\n" + code.rsplit("\n", 2)[0], str(tmp_path / "q.png")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and (tmp_path / "q.png").is_file(), r.stderr[-2000:]
