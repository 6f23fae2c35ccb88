"""The export benchmark (fer_edge.benchmarks.export_bench): its calibration-draw spread and its options."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from fer_edge.benchmarks.export_bench import INT8_MAX_DROP, main, print_report, run


@pytest.fixture(scope="module", autouse=True)
def _gate_minimum_for_synthetic_data():
    """The synthetic PublicTest has 84 images, fewer than the parity gate's 512 (``MIN_VAL_SIZE``): lowered, as in
    tests/test_export.py, so the draws are validated."""
    from fer_edge.exporters import calibration

    with pytest.MonkeyPatch.context() as m:
        m.setattr(calibration, "MIN_VAL_SIZE", 64)
        yield


@pytest.fixture(scope="module")
def seed_report(tiny_checkpoint, synthetic_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_bench")
    report = run(tiny_checkpoint, synthetic_csv, out, targets=["onnx", "openvino"], calib_size=16,
                 calib_seeds=[0, 1, 2])
    return report, out


def test_each_calibration_draw_is_exported_and_validated_on_the_whole_split(seed_report):
    report, out = seed_report
    spread = report["calib_seeds"]
    rows = spread["rows"]
    assert sorted((r["seed"], r["target"]) for r in rows) == [(s, t) for s in (0, 1, 2) for t in ("onnx", "openvino")]
    for r in rows:
        assert 0 <= r["agreement"] <= 1 and r["n"] == 84  # all of the synthetic PublicTest
        assert r["accuracy_drop"] == pytest.approx(r["reference_accuracy"] - r["accuracy"])
    # each draw calibrated on other images: the manifests record different samples
    dirs = {r["seed"]: r["export_dir"] for r in rows}
    hashes = {json.loads((Path(dirs[s]) / "manifest.json").read_text())["calibration"]["index_hash"] for s in (0, 1, 2)}
    assert len(hashes) == 3
    # the default draw (seed 0) is the main export's, validated on the same split: taken from it, not redone
    assert Path(dirs[0]) == out / "all" and not (out / "calib-seed-0").exists()
    main_int8 = {a["target"]: a["validation"] for a in report["artifacts"]
                 if a["precision"] == "int8" and a["variant"] == "main"}
    for r in rows:
        if r["seed"] == 0:
            assert (r["agreement"], r["accuracy"]) == (main_int8[r["target"]]["agreement"],
                                                       main_int8[r["target"]]["accuracy"])


def test_the_summary_is_computed_from_the_draws(seed_report):
    spread = seed_report[0]["calib_seeds"]
    assert [s["target"] for s in spread["summary"]] == ["onnx", "openvino"]
    for s in spread["summary"]:
        drops = sorted(r["accuracy_drop"] for r in spread["rows"] if r["target"] == s["target"])
        assert s["draws"] == 3 and s["median_drop"] == drops[1]
        assert (s["min_drop"], s["max_drop"]) == (drops[0], drops[-1])
        assert s["within_bar"] == sum(d <= INT8_MAX_DROP for d in drops) and s["bar"] == INT8_MAX_DROP


def test_the_report_prints_both_tables(seed_report):
    console = Console(record=True, width=200)
    print_report(seed_report[0], console=console)
    text = console.export_text()
    assert "INT8 per calibration draw (16 images each" in text and "INT8 accuracy drop over the draws" in text
    assert "of 3 (drop <= 0.5 points)" in text
    spread = seed_report[0]["calib_seeds"]
    assert (spread["calib_size"], spread["calib_size_requested"], spread["calib_split_size"]) == (16, 16, 280)
    assert spread["same_images"] is False and spread["note"] is None and "note:" not in text


@pytest.mark.parametrize("bad, msg", [("0,a", "expected comma-separated integers"), ("1,1", "repeated"),
                                      (",", "expected comma-separated integers")])
def test_bad_seed_lists_are_refused_before_any_export(bad, msg, synthetic_csv, tiny_checkpoint, tmp_path, capsys):
    assert main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--out", str(tmp_path / "o"),
                 "--calib-seeds", bad]) == 2
    assert msg in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_an_export_that_calibrates_nothing_runs_without_a_calibration_size(tiny_checkpoint, synthetic_csv,
                                                                            tmp_path):
    """export_bench always passed --calib-size 500, which fer-edge export refuses for an export that calibrates
    nothing (TorchScript, FP32 only): the benchmark could not run on such targets."""
    report = run(tiny_checkpoint, synthetic_csv, tmp_path / "eb", targets=["torchscript"], progress=False)
    assert [a["target"] for a in report["artifacts"]] == ["torchscript"]
    from fer_edge.errors import FerEdgeError

    with pytest.raises(FerEdgeError, match="--calib-size only shapes the INT8 calibration set"):
        run(tiny_checkpoint, synthetic_csv, tmp_path / "eb2", targets=["torchscript"], calib_size=100,
            progress=False)


@pytest.mark.parametrize("kept", [True, False])
def test_calib_seeds_without_a_validated_int8_says_why(kept, tiny_checkpoint, synthetic_csv, tmp_path, monkeypatch):
    """With too few validation images the main export validated no INT8, and the draws were exported for an empty
    target list: "targets is empty". QA: without --out the error named the temporary folder, removed as it was
    printed: the folder is named only when --out keeps it."""
    from fer_edge.errors import FerEdgeError
    from fer_edge.exporters import calibration

    monkeypatch.setattr(calibration, "MIN_VAL_SIZE", 512)  # the real gate: the synthetic split is too small
    with pytest.raises(FerEdgeError, match=r"--calib-seeds needs INT8 artifacts validated on the whole split, and "
                                           r"the main export validated none \(onnx int8: not validated: only 84 ") as e:
        run(tiny_checkpoint, synthetic_csv, tmp_path / "eb" if kept else None, targets=["onnx"], precisions=["int8"],
            calib_size=16, calib_seeds=[0, 1], progress=False)
    if kept:
        assert str(e.value).endswith(f"; its artifacts are in {tmp_path / 'eb' / 'all'}")
    else:
        assert "artifacts are in" not in str(e.value) and "fer-edge-export-bench-" not in str(e.value)


def test_calib_seeds_without_an_int8_target_is_refused_before_any_export(tiny_checkpoint, synthetic_csv, tmp_path,
                                                                          monkeypatch, capsys):
    """QA: `--target torchscript --calib-seeds 0,1` ran the whole export, then failed naming a temporary folder
    already deleted: a usage error now (exit 2), before any export, listed with the other bad options."""
    import fer_edge.exporters
    from fer_edge.errors import OptionError

    def never(*a, **k):
        raise AssertionError("exported before the options were checked")

    monkeypatch.setattr(fer_edge.exporters, "export", never)
    assert main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--target", "torchscript",
                 "--calib-seeds", "0,1", "--calib-methods", "bogus", "--out", str(tmp_path / "o")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: --calib-methods: unknown calibration method 'bogus'"), err
    assert err.count("error: ") == 1, err
    assert ("--calib-seeds compares INT8 exports validated here, and --target torchscript has no target that exports "
            "INT8 and runs on this machine (onnx, openvino") in err, err
    assert not (tmp_path / "o").exists()
    with pytest.raises(OptionError, match="--target torchscript has no target that exports INT8"):
        run(tiny_checkpoint, synthetic_csv, targets=["torchscript"], calib_seeds=[0, 1], progress=False)
    # from Python, targets as export() takes them: a name (it was split into letters, 'o,n,n,x'), Target objects
    from fer_edge.benchmarks.export_bench import seed_targets_problem
    from fer_edge.targets import TARGETS

    for fine in ("onnx", "all", None, ["onnx"], [TARGETS["onnx"]], TARGETS["openvino"], ["torchscript", "onnx"]):
        assert seed_targets_problem(fine) is None, fine
    for lacking in ("torchscript", TARGETS["torchscript"], [TARGETS["torchscript"]]):
        assert "--target torchscript has no target that exports INT8" in seed_targets_problem(lacking), lacking
    assert seed_targets_problem(["bogus"]) is None  # left to the export's own check, which names it
    seen = []  # a generator, as export() takes one: the check must not use it up before the export reads it
    monkeypatch.setattr(fer_edge.exporters, "export", lambda ck, targets, *a, **k: seen.append(list(targets)) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run(tiny_checkpoint, synthetic_csv, targets=(t for t in ["onnx"]), calib_seeds=[0, 1], progress=False)
    assert seen == [["onnx"]]


@pytest.fixture(scope="module")
def temp_folder_report(tiny_checkpoint, synthetic_csv):
    """Draws exported into a temporary folder (no --out), with the default --calib-size (500: more than the 280
    synthetic Training images)."""
    return run(tiny_checkpoint, synthetic_csv, None, targets=["onnx"], precisions=["int8"], calib_seeds=[0, 1],
               progress=False)


def test_a_temporary_folder_is_not_named_in_the_report(temp_folder_report):
    """QA: --json gave each draw's export_dir, a temporary folder removed when the run ended."""
    rows = temp_folder_report["calib_seeds"]["rows"]
    assert [(r["seed"], r["export_dir"]) for r in rows] == [(0, None), (1, None)]
    assert "fer-edge-export-bench-" not in json.dumps(temp_folder_report, default=str)


def test_a_split_no_larger_than_calib_size_says_the_draws_cannot_differ(temp_folder_report):
    """QA: with fewer Training images than --calib-size (280 here, 500 asked for) the title said "500 images each"
    and the draws, all of the split, were shown as a spread ("range +0.57 to +0.57"): the count used is reported,
    with a note that every seed takes the same images."""
    spread = temp_folder_report["calib_seeds"]
    assert temp_folder_report["calibration"]["count"] == 280
    assert (spread["calib_size"], spread["calib_size_requested"], spread["calib_split_size"]) == (280, 500, 280)
    assert spread["same_images"] is True
    assert spread["note"].startswith("the calibration split (Training) holds 280 images, no more than --calib-size "
                                     "500 (the default): every seed calibrates on all of them, the same images, so "
                                     "the draws cannot differ"), spread["note"]
    a, b = spread["rows"]
    assert (a["agreement"], a["accuracy"]) == (b["agreement"], b["accuracy"])  # indeed the same
    console = Console(record=True, width=200)
    print_report(temp_folder_report, console=console)
    text = console.export_text()
    assert "INT8 per calibration draw (280 images each" in text and "500 images" not in text
    assert f"note: {spread['note']}" in " ".join(text.split())


def _copy_earlier_run(seed_report, out: Path) -> None:
    """``out`` holding an earlier run's folders (the module's seed_report run: all, calib-seed-1, calib-seed-2)."""
    import shutil

    shutil.copytree(seed_report[1], out)
    assert sorted(p.name for p in out.iterdir()) == ["all", "calib-seed-1", "calib-seed-2"]


def test_an_interrupt_while_the_report_prints_keeps_the_json(seed_report, tiny_checkpoint, synthetic_csv, tmp_path,
                                                             monkeypatch, capsys):
    """QA: Ctrl-C while the tables printed gave rich's KeyboardInterrupt traceback and exit 1, SIGTERM killed it
    silently (143), and in both cases --json was never written though every export had finished: the JSON is
    written first, and the interrupt path (SIGTERM as Ctrl-C) covers the printing."""
    import signal

    import fer_edge.benchmarks.export_bench as eb

    handlers = []

    def cut_short(report, console=None):
        handlers.append(signal.getsignal(signal.SIGTERM))
        print("checkpoint ...")
        raise KeyboardInterrupt

    monkeypatch.setattr(eb, "print_report", cut_short)
    out, js = tmp_path / "eb", tmp_path / "r.json"
    _copy_earlier_run(seed_report, out)
    try:
        rc = main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--target", "onnx", "--calib-size", "16",
                   "--out", str(out), "--json", str(js)])
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped main (a traceback, exit status 1)")
    assert rc == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("interrupted: ") == 1, err
    line = " ".join(err[err.index("interrupted: "):].split())
    assert line == (f"interrupted: the report was cut short while printing; --json {js} holds all of it; this run's "
                    f"exports are kept under {out} (all: each folder's manifest.json lists its artifacts)"), line
    report = json.loads(js.read_text())
    assert sorted((a["target"], a["precision"]) for a in report["artifacts"]) == [("onnx", p) for p in
                                                                                  ("fp16", "fp32", "int8")]
    # SIGTERM raised KeyboardInterrupt while the report printed (the default handler ends the process silently)
    assert len(handlers) == 1 and callable(handlers[0]), handlers


@pytest.mark.parametrize("finished", [0, 1])
def test_the_interrupted_line_names_only_this_runs_exports(finished, seed_report, tiny_checkpoint, synthetic_csv,
                                                            tmp_path, monkeypatch, capsys):
    """QA: interrupted before any export of its own finished, a run into an --out holding an earlier run's folders
    said "the exports finished so far are kept under eb (all, calib-seed-0, calib-seed-1 ...)": only the folders
    this run exported into are named. ``finished``: how many export calls finish before Ctrl-C (the main one)."""
    import fer_edge.exporters

    real, calls = fer_edge.exporters.export, []

    def export(*a, **k):
        calls.append(a)
        if len(calls) > finished:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(fer_edge.exporters, "export", export)
    out = tmp_path / "eb"
    _copy_earlier_run(seed_report, out)
    assert main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--target", "onnx", "--calib-size", "16",
                 "--calib-seeds", "0,1,2", "--out", str(out), "--json", str(tmp_path / "r.json")]) == 130
    assert len(calls) == finished + 1
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(f"interrupted: no report was printed and --json {tmp_path / 'r.json'} was not written; "), err
    if finished:
        assert err.endswith(f"the exports finished so far are kept under {out} (all: each folder's manifest.json "
                            "lists its artifacts, \"complete\": false where an export was cut short)"), err
    else:
        assert err.endswith(f"no export of this run finished ({out} holds none of them)"), err
    assert not (tmp_path / "r.json").exists()
