"""The bench and merge report files as a group (written together, refused up front, a failed plot a warning) and
their latency plots (no pyplot, plain millisecond ticks, no log scale or Pareto front without points, titles whole).

(conftest's stand-in PNGs are for training and eval plots: the bench plots here are drawn for real.)
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fer_edge.cli import app

#: The cheapest bench the tests run: the checkpoint alone, PyTorch, batch 1, three timed calls.
CHEAP = ["--split", "PublicTest", "--iters", "3", "--warmup", "1", "--rounds", "2", "--batch", "1", "--threads", "1",
         "--runtimes", "pytorch"]
MERGED = ("merged.json", "merged.csv", "merged.md", "merged_latency_vs_accuracy.png")
REPORT = ("report.json", "report.csv", "report.md", "latency_vs_accuracy.png")


def invoke(args, **kw):
    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def _text(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, tiny_checkpoint, synthetic_csv) -> Path:
    """One cheap bench's report folder (its report.json is merged and rewritten by the tests, never changed)."""
    from fer_edge.benchmarks.bench import run_bench

    out = tmp_path_factory.mktemp("report")
    run_bench([tiny_checkpoint], data=synthetic_csv, split="PublicTest", iters=3, warmup=1, rounds=2, batches=(1,),
              threads=1, runtimes=["pytorch"], out_dir=out)
    return out


def _old_files(out: Path, names) -> dict[str, bytes]:
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / name).write_bytes(f"old {name}".encode())
    return {name: (out / name).read_bytes() for name in names}


def _no_plot(monkeypatch):
    """matplotlib cannot be imported (as with MPLBACKEND naming a backend this environment lacks)."""
    import fer_edge.plotting as plotting
    from fer_edge.errors import PlotError

    def broken():
        raise PlotError("matplotlib cannot be imported (ValueError: Key backend: 'nonsense' is not a valid value)")

    monkeypatch.setattr(plotting, "_matplotlib", broken)


def _row(ms: float, acc: float, runtime: str = "onnxruntime", model: str = "fer_nano") -> dict:
    return {"target": "onnx", "precision": "fp32", "runtime": runtime, "device": "cpu", "batch": 1, "status": "ok",
            "latency_ms": {"p50": ms}, "accuracy": acc, "model": model, "source_sha256": model,
            "parity_failures": []}


def _xlabels(ax, minor: bool = False) -> list[str]:
    """The tick labels shown on the x axis (inside its range, not empty)."""
    ax.figure.canvas.draw()
    lo, hi = ax.get_xlim()
    return [t.get_text() for t, v in zip(ax.get_xticklabels(minor=minor), ax.get_xticks(minor=minor))
            if lo <= v <= hi and t.get_text()]


# --- a plot that cannot be drawn ---------------------------------------------------------------------------------
def test_a_bench_whose_plot_fails_keeps_its_files_prints_its_table_and_leaves_no_stale_plot(
        monkeypatch, tmp_path, tiny_checkpoint, synthetic_csv):
    """QA: MPLBACKEND=nonsense fer-edge bench ended in a traceback after writing the data files, without the table,
    and last run's latency_vs_accuracy.png stayed beside the new report."""
    _no_plot(monkeypatch)
    out = tmp_path / "out"
    old = _old_files(out, REPORT)
    result = invoke(["bench", tiny_checkpoint, "--data", synthetic_csv, *CHEAP, "--out", out])
    text = _text(result)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "fer-edge bench:" in text and "pytorch" in text, text  # the table
    assert f"warning: plot {out / 'latency_vs_accuracy.png'} not drawn (matplotlib cannot be imported" in text, text
    assert "the earlier latency_vs_accuracy.png was removed" in text, text
    assert not (out / "latency_vs_accuracy.png").exists()
    assert all((out / n).read_bytes() != old[n] for n in REPORT[:3])
    assert json.loads((out / "report.json").read_text())["rows"]
    assert "latency_vs_accuracy.png" not in text.split("reports in")[1].split("compute limit")[0]
    assert not list(out.glob(".tmp-*"))


def test_a_merge_whose_plot_fails_keeps_its_files_and_prints_its_table(monkeypatch, tmp_path, report_dir):
    _no_plot(monkeypatch)
    out = tmp_path / "m"
    old = _old_files(out, MERGED)
    result = invoke(["report", "merge", report_dir, "--out", out], env={"COLUMNS": "250"})
    text = _text(result)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "1 report, 1 row" in text and "M1" in text, text
    assert f"warning: plot {out / MERGED[3]} not drawn" in text and f"the earlier {MERGED[3]} was removed" in text
    assert not (out / MERGED[3]).exists() and all((out / n).read_bytes() != old[n] for n in MERGED[:3])
    assert f"wrote {out / 'merged.json'}, {out / 'merged.csv'}, {out / 'merged.md'}" in text, text


def test_write_report_passes_the_plot_failure_to_its_warn(monkeypatch, tmp_path, report_dir):
    from fer_edge.benchmarks.report import write_report

    _no_plot(monkeypatch)
    report = json.loads((report_dir / "report.json").read_text())
    old = _old_files(tmp_path / "w", REPORT)
    said: list[str] = []
    files = write_report(report, tmp_path / "w", warn=said.append)
    assert list(files) == list(REPORT[:3]) and len(said) == 1 and "not drawn" in said[0], said
    assert not (tmp_path / "w" / REPORT[3]).exists()
    assert json.loads((tmp_path / "w" / "report.json").read_text()) == report
    assert all((tmp_path / "w" / n).read_bytes() != old[n] for n in REPORT[:3])


def test_merge_under_a_backend_that_does_not_exist(tmp_path, report_dir):
    """The real case, in a process of its own: MPLBACKEND names no backend (a notebook's, outside Jupyter)."""
    import subprocess
    import sys

    out = tmp_path / "m"
    env = {**os.environ, "MPLBACKEND": "nonsense", "COLUMNS": "250"}
    proc = subprocess.run([sys.executable, "-m", "fer_edge", "report", "merge", str(report_dir), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "1 report, 1 row" in proc.stdout, proc.stdout
    assert all((out / n).is_file() for n in MERGED)
    assert (out / MERGED[3]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the caller's matplotlib backend -----------------------------------------------------------------------------
def test_plotting_leaves_the_callers_backend_as_it_was(tmp_path):
    """plot_latency_vs_accuracy and plot_leaderboard called matplotlib.use("Agg", force=True): a notebook's
    backend changed for good."""
    import matplotlib

    from fer_edge.benchmarks.leaderboard import plot_leaderboard
    from fer_edge.benchmarks.report import plot_latency_vs_accuracy

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        plot_latency_vs_accuracy([_row(0.5, 0.6), _row(1.0, 0.7, "pytorch")], tmp_path / "a.png", "t")
        assert matplotlib.get_backend() == "svg"
        plot_leaderboard([{"name": "a", "status": "ok", "extra": False, "pareto": True, "origin": "x",
                           "ort_int8_p50_ms": 2.0, "int8_accuracy": 0.5}], tmp_path / "b.png", "t")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "a.png").read_bytes()[:4] == (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


# --- a report file name taken by a folder -------------------------------------------------------------------------
def test_a_folder_named_like_a_report_file_is_refused_before_measuring(monkeypatch, tmp_path, tiny_checkpoint,
                                                                         synthetic_csv):
    """QA: mkdir OUT/report.md; the bench measured everything, replaced report.json and report.csv, then failed."""
    from fer_edge.benchmarks import bench

    started = []
    monkeypatch.setattr(bench, "collect_artifacts", lambda *a, **k: started.append(1))
    out = tmp_path / "out"
    old = _old_files(out, ("report.json", "report.csv"))
    (out / "report.md").mkdir()
    result = invoke(["bench", tiny_checkpoint, "--data", synthetic_csv, *CHEAP, "--out", out])
    text = _text(result)
    assert result.exit_code == 1 and f"error: --out {out}: {out / 'report.md'} is a folder" in text, text
    assert started == [] and {n: (out / n).read_bytes() for n in old} == old


def test_a_folder_named_like_a_merged_file_is_refused_before_writing(tmp_path, report_dir):
    out = tmp_path / "m"
    old = _old_files(out, ("merged.json", "merged.csv"))
    (out / MERGED[3]).mkdir()
    result = invoke(["report", "merge", report_dir, "--out", out])
    assert result.exit_code == 1 and f"{out / MERGED[3]} is a folder" in _text(result), result.output
    assert {n: (out / n).read_bytes() for n in old} == old and (out / MERGED[3]).is_dir()


def test_check_out_dir_refuses_what_is_not_a_file_and_takes_a_link(tmp_path):
    from fer_edge.benchmarks.report import MERGED_FILES, check_out_dir
    from fer_edge.errors import FerEdgeError

    out = tmp_path / "o"
    (out / "report.csv").mkdir(parents=True)
    with pytest.raises(FerEdgeError, match=r"report\.csv is a folder"):
        check_out_dir(out)
    assert check_out_dir(out, MERGED_FILES) == out  # not a merge's file
    os.mkfifo(out / "merged.md")
    with pytest.raises(FerEdgeError, match=r"merged\.md is not a regular file"):
        check_out_dir(out, MERGED_FILES)
    ok = tmp_path / "ok"
    ok.mkdir()
    (ok / "report.json").symlink_to(tmp_path)  # a link is replaced, not followed
    (ok / "report.md").write_text("old")
    assert check_out_dir(ok) == ok


# --- interrupts and errors while the files are written ------------------------------------------------------------
@pytest.mark.parametrize("where", ["merged.md", "plot"])
def test_a_merge_stopped_while_writing_leaves_every_earlier_file(where, monkeypatch, tmp_path, report_dir):
    """QA: an interrupt between the merge's writes left merged.json and .csv new, .md and the PNG old, and the
    message implied nothing had changed."""
    from fer_edge.benchmarks import report as report_mod

    out = tmp_path / "m"
    old = _old_files(out, MERGED)
    if where == "plot":
        def stop(*a, **k):
            raise KeyboardInterrupt

        monkeypatch.setattr(report_mod, "plot_latency_vs_accuracy", stop)
    else:
        real = Path.write_text

        def write_text(self, *a, **k):
            if self.name.startswith(".tmp-merged-") and self.suffix == ".md":
                raise KeyboardInterrupt
            return real(self, *a, **k)

        monkeypatch.setattr(Path, "write_text", write_text)
    result = invoke(["report", "merge", report_dir, "--out", out])
    assert result.exit_code == 130, result.output
    assert f"interrupted: no merged files were written; {out}/ was left as it was" in _text(result), result.output
    assert {n: (out / n).read_bytes() for n in MERGED} == old
    assert sorted(p.name for p in out.iterdir()) == sorted(MERGED)  # no temporary files left


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_merge_writes_waits_for_all_four_files(sig, monkeypatch, tmp_path, report_dir):
    from fer_edge.benchmarks import report as report_mod

    out = tmp_path / "m"
    old = _old_files(out, MERGED)
    real = report_mod.plot_latency_vs_accuracy

    def plot(*a, **k):
        os.kill(os.getpid(), sig)  # after the three text files were staged, before the plot
        return real(*a, **k)

    monkeypatch.setattr(report_mod, "plot_latency_vs_accuracy", plot)

    def interrupt(signum, frame):  # SIGTERM outside the command's own handling: not the end of the test run
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        result = invoke(["report", "merge", report_dir, "--out", out])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 130, result.output
    text = _text(result)
    assert f"interrupted: after the merged files were written: {out}/ holds this run's {', '.join(MERGED)}" in text
    assert "the summary was not printed" in text, text
    assert all((out / n).read_bytes() != old[n] for n in MERGED)
    assert json.loads((out / "merged.json").read_text())["rows"]


def test_a_failed_write_replaces_none_of_the_files(monkeypatch, tmp_path, report_dir):
    """A full disk on the third file: the first two were already replaced."""
    from fer_edge.benchmarks.report import write_report

    report = json.loads((report_dir / "report.json").read_text())
    out = tmp_path / "w"
    old = _old_files(out, REPORT)
    real = Path.write_text

    def write_text(self, *a, **k):
        if self.name.startswith(".tmp-report-") and self.suffix == ".md":
            raise OSError(28, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(OSError, match="No space left") as info:
        write_report(report, out)
    assert {n: (out / n).read_bytes() for n in REPORT} == old
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT)
    assert info.value.filename == str(out / "report.md")  # the report's file, not the temporary one


# --- the plots themselves ------------------------------------------------------------------------------------------
def test_latency_ticks_are_plain_milliseconds():
    """QA: ticks read 4x10^-1, 6x10^-1, or only 10^-1, 10^0, 10^1 were labelled."""
    from fer_edge.benchmarks.report import latency_accuracy_figure

    def labels(*ms):
        ax = latency_accuracy_figure([_row(x, 0.5 + 0.01 * i) for i, x in enumerate(ms)], "t").axes[0]
        shown = _xlabels(ax) + _xlabels(ax, minor=True)
        assert shown and not any("10^" in s or "$" in s or "e-" in s for s in shown), shown
        return sorted(shown, key=float)

    assert labels(0.4, 0.6) == ["0.4", "0.5", "0.6"]
    assert labels(0.2, 9.0) == ["0.2", "0.5", "1", "2", "5", "10"]  # under two decades: 2 and 5 of each
    assert labels(0.05, 400.0) == ["0.1", "1", "10", "100"]  # more: the decades
    assert labels(3000.0, 9000.0)[0] == "3000" and labels(3000.0, 9000.0)[-1] == "9000"
    few = labels(0.41, 0.43)  # points close together: the axis still has two numbers
    assert few == ["0.4", "0.5"], few


def test_the_leaderboard_plot_has_plain_ticks_too(monkeypatch, tmp_path):
    import fer_edge.plotting as plotting
    from fer_edge.benchmarks.leaderboard import plot_leaderboard

    figs = []
    monkeypatch.setattr(plotting, "save_png", lambda fig, path, dpi=None: figs.append(fig) or Path(path))
    rows = [{"name": n, "status": "ok", "extra": False, "pareto": True, "origin": "x", "ort_int8_p50_ms": ms,
             "int8_accuracy": acc} for n, ms, acc in (("a", 0.3, 0.5), ("b", 0.7, 0.6))]
    plot_leaderboard(rows, tmp_path / "p.png", "t")
    ax = figs[0].axes[0]
    shown = _xlabels(ax) + _xlabels(ax, minor=True)
    assert sorted(shown, key=float) == ["0.3", "0.4", "0.5", "0.6", "0.7"], shown


def test_an_empty_plot_has_no_log_scale_wording_nor_pareto_legend():
    from fer_edge.benchmarks.report import latency_accuracy_figure

    ax = latency_accuracy_figure([{**_row(1.0, 0.5), "status": "failed", "latency_ms": None, "accuracy": None}],
                                 "t").axes[0]
    assert ax.get_xlabel() == "p50 latency per call (ms)" and ax.get_xscale() == "linear"
    assert ax.get_legend() is None
    assert any(t.get_text() == "no measured rows" for t in ax.texts)
    ax = latency_accuracy_figure([_row(1.0, 0.5)], "t").axes[0]
    assert ax.get_xlabel() == "p50 latency per call (ms, log scale)" and ax.get_legend() is not None


def test_a_long_title_is_wrapped_inside_the_image():
    """QA: the title of a bench of several models ran past both edges of the image."""
    from fer_edge.benchmarks.report import latency_accuracy_figure

    models = [f"model_number_{i}" for i in range(12)]
    title = f"fer-edge bench: {', '.join(models)} on a-long-hostname (Intel(R) Xeon(R) Platinum 8480C CPU)"
    fig = latency_accuracy_figure([_row(1.0 + i, 0.5, model=m) for i, m in enumerate(models)], title)
    fig.canvas.draw()
    ax = fig.axes[0]
    box, page = ax.title.get_window_extent(), fig.bbox
    assert ax.title.get_text().count("\n") >= 1 and " ".join(ax.title.get_text().split()) == title
    assert box.x0 >= page.x0 and box.x1 <= page.x1 and box.y1 <= page.y1, (box, page)


def test_a_bench_interrupted_after_writing_names_only_the_files_it_wrote(tmp_path):
    """QA: with the plot not drawn, the interrupted line still named latency_vs_accuracy.png as this run's."""
    from fer_edge.cli.bench import _interrupted_note

    out = tmp_path / "b"
    out.mkdir()
    for name in ("report.json", "report.csv", "report.md"):
        (out / name).write_text("{}" if name.endswith("json") else "x")
    note = _interrupted_note(out, None, ["report.json", "report.csv", "report.md"])
    assert note.startswith("after the report was written") and "report.json, report.csv, report.md;" in note
    assert "latency_vs_accuracy.png" not in note
