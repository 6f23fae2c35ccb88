"""``python -m fer_edge.benchmarks.leaderboard``: the Pareto front, and tiny end-to-end runs on the synthetic CSV."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from fer_edge.benchmarks.leaderboard import main, pareto_front, recipe_differences

MODELS = ("simple_cnn", "fer_nano")
#: One epoch of two steps, a few timed calls, one thread, calibration on the whole tiny training split.
TINY = ["--epochs", "1", "--max-steps-per-epoch", "2", "--threads", "1", "--bench-iters", "3",
        "--bench-warmup", "1", "--calib-size", "56"]


# --- the Pareto front ---------------------------------------------------------------------------
@pytest.mark.parametrize("points, front", [
    ([], []),
    ([(1.0, 0.5)], [0]),
    # (3, .55) is slower and less accurate than (2, .6); the rest trade latency for accuracy
    ([(1.0, 0.5), (2.0, 0.6), (3.0, 0.55), (0.5, 0.4)], [3, 0, 1]),
    # equal points are both on the front; a slower point of equal accuracy is dominated
    ([(1.0, 0.5), (1.0, 0.5), (2.0, 0.5)], [0, 1]),
    # same latency: the more accurate one dominates
    ([(1.0, 0.5), (1.0, 0.6)], [1]),
    # same accuracy: the faster one dominates, whatever the order
    ([(2.0, 0.7), (1.0, 0.7)], [1]),
    # missing or non-finite coordinates are left out
    ([(None, 0.9), (1.0, math.nan), (2.0, 0.3)], [2]),
])
def test_pareto_front(points, front):
    assert pareto_front(points) == front


def test_pareto_front_definition_on_random_points():
    import random

    rng = random.Random(0)
    pts = [(rng.choice([1.0, 2.0, 3.0, 4.0]), rng.choice([0.1, 0.2, 0.3])) for _ in range(30)]
    got = set(pareto_front(pts))
    for i, (li, ai) in enumerate(pts):
        dominated = any(lj <= li and aj >= ai and (lj < li or aj > ai) for lj, aj in pts)
        assert (i in got) == (not dominated), (i, pts[i])


def test_recipe_differences_ignore_out_and_threads(tmp_path):
    from fer_edge.benchmarks.leaderboard import Recipe

    a = Recipe().train_config(tmp_path / "d.csv", "fer_nano", tmp_path / "a").to_dict()
    b = Recipe(threads=7).train_config(tmp_path / "d.csv", "fer_nano", tmp_path / "b").to_dict()
    assert recipe_differences(a, b) == []
    c = Recipe(epochs=5).train_config(tmp_path / "d.csv", "fer_nano", tmp_path / "a").to_dict()
    assert [d.split(":")[0] for d in recipe_differences(a, c)] == ["epochs"]
    # where it ran is not the recipe: a leaderboard trained with --device auto is not retrained under --device cpu
    d = Recipe(device="cpu").train_config(tmp_path / "d.csv", "fer_nano", tmp_path / "a").to_dict()
    assert recipe_differences(a, d) == []


def test_what_is_not_the_recipe_is_what_resume_lets_differ():
    from fer_edge.benchmarks.leaderboard import NOT_RECIPE_FIELDS
    from fer_edge.training.trainer import RESUME_FREE

    assert set(NOT_RECIPE_FIELDS) == set(RESUME_FREE) - {"data"}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_refused_before_anything_is_moved(synthetic_csv, tmp_path, capsys):
    out = tmp_path / "lb"
    assert main(["--data", str(synthetic_csv), "--out", str(out), "--models", "fer_nano", "--device", "cuda",
                 *TINY]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--device cuda: no CUDA device is available here" in err and not out.exists()


def test_ctrl_c_says_what_is_kept_and_exits_130(synthetic_csv, tmp_path, capsys, monkeypatch):
    from fer_edge.benchmarks import leaderboard

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(leaderboard, "run_leaderboard", stop)
    assert main(["--data", str(synthetic_csv), "--out", str(tmp_path / "lb"), *TINY]) == 130
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("interrupted: the leaderboard files were not written") and "rerunning the same" in err
    assert "Traceback" not in err


# --- end to end ----------------------------------------------------------------------------------
def _run(argv, tmp_cache: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FER_EDGE_CACHE_DIR", str(tmp_cache))
        t0 = time.perf_counter()
        rc = main([str(a) for a in argv])
        return rc, time.perf_counter() - t0


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, synthetic_csv):
    """Two models trained, exported and benched into one leaderboard."""
    out = tmp_path_factory.mktemp("leaderboard")
    rc, seconds = _run(["--data", synthetic_csv, "--out", out, "--models", ",".join(MODELS), *TINY],
                       tmp_path_factory.getbasetemp() / "cache")
    doc = json.loads((out / "leaderboard.json").read_text())
    mtimes = {m: (out / "runs" / m / "best.pt").stat().st_mtime_ns for m in MODELS}
    return rc, out, doc, mtimes, seconds


@pytest.fixture(scope="module")
def second_run(tmp_path_factory, synthetic_csv, first_run):
    """The same leaderboard again, with a checkpoint of the first run and one that fails on the way (a model of 6
    classes: it loads, so it passes the up-front checks, and fails when it is first scored) as extras."""
    from fer_edge.checkpoint import save_checkpoint
    from fer_edge.models import create_model

    _, out, _, _, _ = first_run
    broken = tmp_path_factory.mktemp("broken") / "broken.pt"
    save_checkpoint(broken, {"model": "fer_nano", "model_kwargs": {}, "labels": ["a", "b", "c", "d", "e", "f"],
                             "state_dict": create_model("fer_nano", num_classes=6).state_dict(),
                             "normalization": {"mean": 0.5, "std": 0.25}, "train_config": {}, "metrics": {}})
    rc, seconds = _run(["--data", synthetic_csv, "--out", out, "--models", ",".join(MODELS), *TINY,
                        "--extra", f"mine={out / 'runs' / 'fer_nano' / 'best.pt'}", "--extra", f"broken={broken}"],
                       tmp_path_factory.getbasetemp() / "cache")
    return rc, out, json.loads((out / "leaderboard.json").read_text()), seconds


def _check_measured(row):
    for key in ("fp32_accuracy", "int8_accuracy", "int8_agreement"):
        assert isinstance(row[key], float) and 0.0 <= row[key] <= 1.0, (row["name"], key, row[key])
    for key in ("pytorch_fp32_p50_ms", "ort_int8_p50_ms"):
        assert isinstance(row[key], float) and row[key] > 0, (row["name"], key, row[key])
    assert row["params"] > 0 and row["macs"] > 0


def test_end_to_end(first_run):
    rc, out, doc, _, seconds = first_run
    print(f"end-to-end leaderboard of {len(MODELS)} models: {seconds:.1f} s")
    assert rc == 0
    rows = {r["name"]: r for r in doc["rows"]}
    assert set(rows) == set(MODELS)
    for name in MODELS:
        r = rows[name]
        assert r["status"] == "ok" and r["recipe"] == "shared" and r["training"] == "trained", r
        _check_measured(r)
        assert Path(r["bench_dir"], "report.json").is_file()
        assert Path(r["export_dir"], "manifest.json").is_file()
    # params and MACs are the registry summary's
    from fer_edge.models import describe_model

    assert rows["fer_nano"]["params"] == describe_model("fer_nano")["params"]
    # sorted by FP32 accuracy, and at least one row on the Pareto front
    accs = [r["fp32_accuracy"] for r in doc["rows"]]
    assert accs == sorted(accs, reverse=True)
    assert any(r["pareto"] for r in doc["rows"])
    assert doc["recipe"]["epochs"] == 1 and doc["recipe"]["max_steps_per_epoch"] == 2
    assert doc["bench"]["threads"] == 1 and doc["bench"]["batch"] == 1
    assert doc["environment"]["cpu"] and doc["tool_versions"]["onnxruntime"]
    md = (out / "leaderboard.md").read_text()
    assert "Shared recipe: 1 epoch x 2 steps of 128" in md and "shorter than" in md
    assert all(f"| {m} |" in md for m in MODELS)
    png = out / "leaderboard.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_finished_run_is_reused_only_on_the_same_data(first_run, synthetic_csv):
    """The recipe names the data by path: other images at the same path (a re-exported CSV) retrain the model."""
    from fer_edge.benchmarks.leaderboard import Recipe, training_plan
    from fer_edge.data import load_split
    from fer_edge.training.trainer import data_fingerprint

    _, out, _, _, _ = first_run
    run_dir = out / "runs" / "fer_nano"
    cfg = Recipe(epochs=1, max_steps_per_epoch=2, threads=1).train_config(synthetic_csv, "fer_nano", run_dir)
    same = {"train": data_fingerprint(load_split(synthetic_csv, "Training")),
            "val": data_fingerprint(load_split(synthetic_csv, "PublicTest"))}
    assert training_plan(run_dir, cfg, same)[0] == "skip"
    changed = {**same, "val": {**same["val"], "sha256": "0" * 64}}
    action, why = training_plan(run_dir, cfg, changed)
    assert action == "replace"
    assert "trained on other data" in why and "validation split 'PublicTest'" in why and "training" not in why
    fewer = {**same, "train": {**same["train"], "n": same["train"]["n"] - 1, "sha256": "1" * 64}}
    assert training_plan(run_dir, cfg, fewer)[0] == "replace"


def test_an_export_calibrated_on_other_training_images_is_not_reused(first_run, synthetic_csv):
    """An --extra row's INT8 export was reused after the training split (its calibration images) changed."""
    from fer_edge.benchmarks.leaderboard import _export_is_current
    from fer_edge.data import load_split
    from fer_edge.utils import sha256_path

    _, out, _, _, _ = first_run
    ckpt_sha = sha256_path(out / "runs" / "fer_nano" / "best.pt")
    export_dir = out / "exports" / "fer_nano"
    train_sha = load_split(synthetic_csv, "Training").fingerprint["sha256"]
    assert _export_is_current(export_dir, ckpt_sha, synthetic_csv, 56, train_sha)
    assert not _export_is_current(export_dir, ckpt_sha, synthetic_csv, 56, "0" * 64)


def test_rerun_does_not_retrain_and_benches_extras(first_run, second_run):
    _, out, _, mtimes, _ = first_run
    rc, _, doc, seconds = second_run
    print(f"second run (no training, exports reused, 2 extras): {seconds:.1f} s")
    assert {m: (out / "runs" / m / "best.pt").stat().st_mtime_ns for m in MODELS} == mtimes
    rows = {r["name"]: r for r in doc["rows"]}
    assert all(rows[m]["training"] == "reused" and rows[m]["status"] == "ok" for m in MODELS)
    mine = rows["mine"]
    assert mine["status"] == "ok" and mine["extra"] and mine["architecture"] == "fer_nano"
    assert mine["recipe"] != "shared" and "1 epoch x 2 steps" in mine["recipe_detail"]
    assert not mine["pareto"]  # another recipe: not on the shared front
    _check_measured(mine)
    assert Path(mine["export_dir"]).parent.name == "extra"
    # a model that fails gets a row with its error; the others still ran, and the exit status says so
    assert rc == 1
    broken = rows["broken"]
    assert broken["status"] == "failed" and "the model has 6 classes" in broken["error"], broken
    assert doc["rows"][-1]["name"] == "broken"
    md = (out / "leaderboard.md").read_text()
    assert "`mine`: own recipe" in md and "Failed:" in md
    # the shared-recipe rows' benches measured the same files, settings and machine: reused, and said so
    first = json.loads((out / "bench" / "fer_nano" / "report.json").read_text())
    for m in MODELS:
        assert rows[m]["bench_reused"] and rows[m]["bench_measured_at"], rows[m]
        _check_measured(rows[m])
    assert rows["fer_nano"]["bench_measured_at"] == first["created_at"]
    assert not mine["bench_reused"] and mine["bench_measured_at"]
    assert "reused from an earlier run's bench" in md and f"`fer_nano`: measured {first['created_at']}" in md


def test_an_earlier_bench_is_reused_only_for_the_same_files_settings_and_machine(first_run, second_run, monkeypatch):
    import copy

    from fer_edge.benchmarks.environment import describe_environment
    from fer_edge.benchmarks.leaderboard import BENCH_RUNTIMES, BenchSettings, bench_request, reusable_bench

    _, out, doc, _, _ = first_run
    row = next(r for r in doc["rows"] if r["name"] == "fer_nano")
    bench_dir, export_dir = Path(row["bench_dir"]), Path(row["export_dir"])
    stored = json.loads((bench_dir / "report.json").read_text())
    settings = BenchSettings(iters=3, warmup=1)
    request = bench_request(doc["data"]["split"], doc["data"]["sha256"], doc["data"]["n_images"], settings)
    here = describe_environment(list(BENCH_RUNTIMES))
    report, why = reusable_bench(bench_dir, row["checkpoint_sha256"], export_dir, request, here)
    assert why == "" and report.created_at == stored["created_at"] and report.rows == stored["rows"]
    for args, reason in (
        ((bench_dir, "0" * 64, export_dir, request, here), "the checkpoint changed"),
        ((bench_dir, row["checkpoint_sha256"], export_dir, {**request, "threads": 2, "batches": [4]}, here),
         "other bench settings (batches, threads)"),
        ((bench_dir, row["checkpoint_sha256"], export_dir, request, {**here, "fingerprint": "another"}),
         "another machine"),
        ((bench_dir.parent / "none", row["checkpoint_sha256"], export_dir, request, here), "no earlier report"),
    ):
        got, why = reusable_bench(*args)
        assert got is None and reason in why
    other_cpu = copy.deepcopy(here)
    other_cpu["cpu"]["flags"] = other_cpu["cpu"]["flags"] + ["amx_tile"]
    assert reusable_bench(bench_dir, row["checkpoint_sha256"], export_dir, request, other_cpu)[0] is None
    # an exported file that no longer matches what was benched is not reused either
    moved = bench_dir.parent / "fer_nano_other"
    moved.mkdir(exist_ok=True)
    tampered = copy.deepcopy(stored)
    next(r for r in tampered["rows"] if not r["reference"])["sha256"] = "f" * 64
    (moved / "report.json").write_text(json.dumps(tampered))
    got, why = reusable_bench(moved, row["checkpoint_sha256"], export_dir, request, here)
    assert got is None and why == "the exported files changed"
    # nor a bench whose ONNX Runtime sessions ran with another session config than they would now
    from fer_edge import cpu

    here_saturates = cpu.int8_can_saturate_here()
    monkeypatch.setattr(cpu, "int8_can_saturate_here", lambda: not here_saturates)
    got, why = reusable_bench(bench_dir, row["checkpoint_sha256"], export_dir, request, here)
    assert got is None and why == "onnxruntime would run with other settings now"


def test_unknown_model_is_rejected(synthetic_csv, tmp_path, capsys):
    rc = main(["--data", str(synthetic_csv), "--out", str(tmp_path), "--models", "fer_nano,fer_nanoo"])
    err = capsys.readouterr().err
    assert rc == 2  # bad options: a usage error
    assert "unknown model 'fer_nanoo'" in err and "fer_nano" in err and "simple_cnn" in err
    assert not any(tmp_path.iterdir())  # rejected before any work


def test_bad_extra_is_rejected_up_front(synthetic_csv, tmp_path, capsys):
    assert main(["--data", str(synthetic_csv), "--out", str(tmp_path), "--models", "fer_nano",
                 "--extra", f"fer_nano={tmp_path}"]) == 2
    assert "also a model trained with the shared recipe" in capsys.readouterr().err
    assert main(["--data", str(synthetic_csv), "--out", str(tmp_path), "--models", "fer_nano",
                 "--extra", f"x={tmp_path / 'missing.pt'}"]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_retrained_entry_is_exported_again_into_its_folder(tiny_checkpoint, synthetic_csv, tmp_path):
    """The leaderboard's export folder belongs to it: a new checkpoint of an entry replaces the old export
    (an ordinary `fer-edge export` refuses a folder holding another checkpoint's artifacts)."""
    import torch

    from fer_edge.benchmarks.leaderboard import export_entry
    from fer_edge.utils import sha256_path

    retrained = tmp_path / "retrained.pt"
    raw = torch.load(tiny_checkpoint, weights_only=True)
    raw["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in raw["state_dict"].items()}
    torch.save(raw, retrained)
    out = tmp_path / "exports" / "fer_nano"
    for ck in (tiny_checkpoint, retrained):
        export_entry(ck, sha256_path(ck), out, synthetic_csv, 64, lambda m: None, "fer_nano")
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["source"]["sha256"] == sha256_path(ck)
    assert sorted(p.name for p in out.glob("*.onnx")) == ["fer_nano_fp32.onnx", "fer_nano_int8.onnx"]


@pytest.mark.parametrize("option", ["--lr", "--weight-decay", "--label-smoothing", "--ema", "--bench-seconds"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_float_option_that_is_not_finite_is_refused_up_front(synthetic_csv, tmp_path, capsys, option, value):
    # --bench-iters would override --bench-seconds: a non-finite one is refused all the same
    assert main(["--data", str(synthetic_csv), "--out", str(tmp_path), "--models", "fer_nano", "--bench-iters", "3",
                 f"{option}={value}"]) == 2
    err = capsys.readouterr().err
    assert f"{option} must be a finite number, not {float(value)!r}" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing trained


@pytest.mark.parametrize("models", ["", ",", " , "])
def test_an_empty_models_list_is_refused_not_taken_for_every_model(synthetic_csv, tmp_path, capsys, models):
    assert main(["--data", str(synthetic_csv), "--out", str(tmp_path), "--models", models]) == 2
    assert ("--models is empty: name at least one model, or leave the option out for every model"
            in capsys.readouterr().err)
    assert not any(tmp_path.iterdir())
    from fer_edge.benchmarks.leaderboard import run_leaderboard
    from fer_edge.errors import FerEdgeError

    with pytest.raises(FerEdgeError, match="--models is empty"):
        run_leaderboard(synthetic_csv, tmp_path, models=[])
    assert not any(tmp_path.iterdir())


def test_every_bad_option_is_listed_at_once(synthetic_csv, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    assert main(["--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "a_file"), "--models", "",
                 "--bench-seconds", "nan", "--lr", "0", "--epochs", "0", "--bench-warmup", "-1",
                 "--calib-size", "0"]) == 2
    err = capsys.readouterr().err
    for part in ("missing.csv: no such file or folder", "--models is empty", "--bench-seconds must be a finite number",
                 "--lr must be positive", "--epochs must be at least 1", "--bench-warmup must be at least 0",
                 "--calib-size must be at least 1", "a_file is a file, not a folder"):
        assert part in err, part
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_models_given_as_a_generator_are_all_read(synthetic_csv, tmp_path):
    from fer_edge.benchmarks.leaderboard import run_leaderboard
    from fer_edge.errors import FerEdgeError

    with pytest.raises(FerEdgeError, match="unknown model"):  # the generator's names were seen, not consumed
        run_leaderboard(synthetic_csv, tmp_path / "lb", models=(m for m in ["no_such_model"]))


def test_every_bad_extra_is_reported_at_once(synthetic_csv, tmp_path, capsys):
    assert main(["--data", str(synthetic_csv), "--out", str(tmp_path), "--models", "fer_nano",
                 "--extra", f"fer_nano={tmp_path}", "--extra", f"x={tmp_path / 'missing.pt'}",
                 "--extra", "bad name=small", "--extra", "=small", "--extra", "y=small", "--extra", "y=nano"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    for part in ("also a model trained with the shared recipe", "missing.pt", "NAME may hold letters",
                 "NAME=CHECKPOINT (a path or a shipped name), got '=small'", "the name 'y' is given twice"):
        assert part in err, part
    assert not any(tmp_path.iterdir())
    # a file that is no checkpoint, and a name repeated after a missing file, are caught before any training too
    junk = tmp_path.parent / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    out = tmp_path / "lb"
    assert main(["--data", str(synthetic_csv), "--out", str(out), "--models", "fer_nano",
                 "--extra", f"j={junk}", "--extra", f"a={tmp_path / 'missing.pt'}", "--extra", "a=small"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--extra 'j=" in err and "junk.pt" in err and "the name 'a' is given twice" in err
    assert not out.exists()


# --- reruns that repair what an earlier run left behind --------------------------------------------
def _copy_out(src: Path, dst: Path, models=MODELS) -> Path:
    """A leaderboard folder holding ``models``' runs, exports and bench reports of ``src`` (a run to change)."""
    import shutil

    for m in models:
        for part in ("runs", "exports", "bench"):
            shutil.copytree(src / part / m, dst / part / m)
    return dst


def _strict_json(path: Path):
    def refuse(c):
        raise ValueError(f"{path} holds {c}: not strict JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _bench_args(first_run):
    from fer_edge.benchmarks.environment import describe_environment
    from fer_edge.benchmarks.leaderboard import BENCH_RUNTIMES, BenchSettings, bench_request

    _, out, doc, _, _ = first_run
    row = next(r for r in doc["rows"] if r["name"] == "fer_nano")
    request = bench_request(doc["data"]["split"], doc["data"]["sha256"], doc["data"]["n_images"],
                            BenchSettings(iters=3, warmup=1))
    return row, request, describe_environment(list(BENCH_RUNTIMES))


def test_a_bench_without_every_row_measured_is_not_reused(first_run, tmp_path):
    """A report whose INT8 row is missing, failed, or holds a NaN was reused on every rerun, then failed the model."""
    import copy

    from fer_edge.benchmarks.leaderboard import reusable_bench

    row, request, here = _bench_args(first_run)
    stored = json.loads((Path(row["bench_dir"]) / "report.json").read_text())
    int8 = next(i for i, r in enumerate(stored["rows"]) if r["precision"] == "int8")

    def why(report: dict) -> str:
        d = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        (d / "report.json").write_text(json.dumps(report))
        got, reason = reusable_bench(d, row["checkpoint_sha256"], Path(row["export_dir"]), request, here)
        assert got is None
        return reason

    dropped = copy.deepcopy(stored)
    del dropped["rows"][int8]
    assert why(dropped) == "the earlier bench did not measure ONNX Runtime INT8"
    failed = copy.deepcopy(stored)
    failed["rows"][int8].update(status="failed", reason="boom", latency_ms=None)
    assert why(failed).startswith("the earlier bench did not measure ONNX Runtime INT8 (failed: boom")
    for key in ("latency_ms", "accuracy", "agreement"):
        bad = copy.deepcopy(stored)
        if key == "latency_ms":
            bad["rows"][int8]["latency_ms"]["p50"] = math.nan
        else:
            bad["rows"][int8][key] = math.nan
        # a report file holding NaN is no JSON (fer-edge writes null): read as unreadable, so measured again
        assert why(bad).startswith("earlier report or export unreadable (") and "NaN is" in why(bad), key


def test_non_finite_bench_figures_are_never_taken(first_run):
    """A NaN in a bench row gave an "ok" leaderboard row showing `nan`, and NaN in leaderboard.json."""
    from types import SimpleNamespace

    from fer_edge.benchmarks.leaderboard import Entry, new_row, take_bench

    row, _, _ = _bench_args(first_run)
    stored = json.loads((Path(row["bench_dir"]) / "report.json").read_text())
    for r in stored["rows"]:
        if r["precision"] == "int8":
            r["latency_ms"]["p50"] = math.nan
            r["agreement"] = math.inf
    fresh = new_row(Entry("fer_nano", "fer_nano"))
    missing = take_bench(fresh, SimpleNamespace(rows=stored["rows"], reference=stored["reference"]))
    assert len(missing) == 1 and missing[0].startswith("ONNX Runtime INT8: not a finite number")
    assert fresh["ort_int8_p50_ms"] is None and fresh["int8_agreement"] is None
    assert all(not isinstance(v, float) or math.isfinite(v) for v in fresh.values())


def test_the_plot_leaves_out_non_finite_points_and_says_log_scale_only_when_it_is(monkeypatch, tmp_path):
    from fer_edge.benchmarks import leaderboard, report

    seen = {}

    def finish(fig, ax, path, title, has_points, xlabel, ylabel):
        import matplotlib.pyplot as plt

        seen.update(has_points=has_points, xlabel=xlabel)
        plt.close(fig)

    monkeypatch.setattr(report, "finish_latency_plot", finish)
    row = {"name": "a", "status": "ok", "extra": False, "pareto": False, "origin": "x",
           "ort_int8_p50_ms": math.nan, "int8_accuracy": 0.5}
    leaderboard.plot_leaderboard([row], tmp_path / "p.png", "t")
    assert seen == {"has_points": False, "xlabel": "ONNX Runtime INT8 p50 latency, batch 1, 1 thread (ms)"}
    leaderboard.plot_leaderboard([{**row, "ort_int8_p50_ms": 2.0}], tmp_path / "p.png", "t")
    assert seen["has_points"] and seen["xlabel"].endswith("(ms, log scale)")


def test_the_leaderboard_files_hold_no_nan_and_a_write_failure_is_an_error(first_run, tmp_path):
    from fer_edge.benchmarks.leaderboard import write_leaderboard
    from fer_edge.errors import FerEdgeError

    _, _, doc, _, _ = first_run
    bad = json.loads(json.dumps(doc))
    bad["rows"][0]["int8_agreement"] = math.nan
    bad["wall_seconds"] = math.inf
    write_leaderboard(bad, tmp_path / "a")
    written = _strict_json(tmp_path / "a" / "leaderboard.json")
    assert written["rows"][0]["int8_agreement"] is None and written["wall_seconds"] is None
    (tmp_path / "b" / "leaderboard.md").mkdir(parents=True)
    with pytest.raises(FerEdgeError, match=r"cannot write the leaderboard files into .*leaderboard\.md"):
        write_leaderboard(doc, tmp_path / "b")


def test_a_leaderboard_plot_that_cannot_be_drawn_is_a_warning(first_run, tmp_path, monkeypatch, capsys):
    """The table and the JSON are what was asked for: a broken matplotlib no longer loses them (nor leaves the
    previous run's plot beside them)."""
    from fer_edge.benchmarks import leaderboard
    from fer_edge.errors import PlotError

    _, _, doc, _, _ = first_run
    out = tmp_path / "lb"
    out.mkdir()
    (out / "leaderboard.png").write_bytes(b"an earlier run's plot")

    def broken(rows, path, title):
        raise PlotError("matplotlib cannot be imported (ValueError: bad backend)")

    monkeypatch.setattr(leaderboard, "plot_leaderboard", broken)
    written = leaderboard.write_leaderboard(doc, out)
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.json", "leaderboard.md"]
    assert sorted(written) == ["leaderboard.json", "leaderboard.md"]  # what the "wrote ..." line names
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: plot" in err and "bad backend" in err and "earlier leaderboard.png was removed" in err


def test_ctrl_c_while_the_files_are_written_is_held_until_all_three_are(first_run, tmp_path, monkeypatch, capsys):
    import os
    import signal

    from fer_edge.benchmarks import leaderboard

    _, _, doc, _, _ = first_run

    def plot(rows, path, title):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after two of the three files
        Path(path).write_bytes(b"png")
        return Path(path)

    monkeypatch.setattr(leaderboard, "plot_leaderboard", plot)
    with pytest.raises(leaderboard.InterruptedAfterWriting) as info:
        leaderboard.write_leaderboard(doc, tmp_path / "lb")
    assert all(p.is_file() for p in info.value.paths.values())

    def stop(*a, **k):
        raise info.value

    monkeypatch.setattr(leaderboard, "run_leaderboard", stop)
    assert main(["--data", str(tmp_path / "lb" / "leaderboard.md"), "--out", str(tmp_path / "lb"), *TINY]) == 130
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("interrupted after the leaderboard files were written") and "not written" not in err


def test_a_folder_where_a_leaderboard_file_goes_is_refused_before_any_work(synthetic_csv, tmp_path, capsys):
    (tmp_path / "leaderboard.png").mkdir()
    assert main(["--data", str(synthetic_csv), "--out", str(tmp_path), "--models", "fer_nano", *TINY]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "leaderboard.png is a folder" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leaderboard.png"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_an_out_that_cannot_be_created_is_refused_before_any_training(synthetic_csv, capsys):
    assert main(["--data", str(synthetic_csv), "--out", "/proc/fer_edge_lb/x", "--models", "fer_nano", *TINY]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: bad options:") and "--out /proc/fer_edge_lb/x" in err
    assert "failed at" not in err and "Traceback" not in err


def test_a_run_folder_without_a_readable_checkpoint_is_replaced(first_run, tmp_path):
    """A corrupt best.pt, a truncated best.pt beside an intact last.pt, or a folder of history files only failed
    the model on every rerun (or told the user to choose another --out)."""
    import shutil

    from fer_edge.benchmarks.leaderboard import Recipe, training_plan

    _, out, _, _, _ = first_run
    cfg = Recipe(epochs=1, max_steps_per_epoch=2, threads=1).train_config("d.csv", "fer_nano", tmp_path)
    run = tmp_path / "run"
    shutil.copytree(out / "runs" / "fer_nano", run)
    (run / "best.pt").write_bytes((run / "best.pt").read_bytes()[:100])
    action, why = training_plan(run, cfg)
    assert action == "replace" and why.startswith("best.pt is not a readable checkpoint")
    (run / "best.pt").write_bytes(b"garbage")
    (run / "last.pt").unlink(missing_ok=True)
    assert training_plan(run, cfg)[0] == "replace"
    (run / "best.pt").unlink()
    action, why = training_plan(run, cfg)
    assert action == "replace" and "holds no checkpoint" in why and "metrics.json" in why
    empty = tmp_path / "empty"
    empty.mkdir()
    assert training_plan(empty, cfg) == ("train", "no previous run")
    from fer_edge.training.trainer import LOCK_FILE

    (empty / LOCK_FILE).touch()  # a run killed (kill -9) before its first epoch leaves only its lock file
    assert training_plan(empty, cfg) == ("train", "no previous run")


def test_the_same_data_at_another_path_reuses_the_runs_and_exports(first_run, synthetic_csv, tmp_path):
    import shutil

    from fer_edge.benchmarks.leaderboard import Recipe, _export_is_current, training_plan
    from fer_edge.data import load_split
    from fer_edge.training.trainer import data_fingerprint
    from fer_edge.utils import sha256_path

    _, out, _, _, _ = first_run
    moved = shutil.copy(synthetic_csv, tmp_path / "moved.csv.gz")
    run_dir = out / "runs" / "fer_nano"
    cfg = Recipe(epochs=1, max_steps_per_epoch=2, threads=1).train_config(moved, "fer_nano", run_dir)
    fps = {"train": data_fingerprint(load_split(moved, "Training")),
           "val": data_fingerprint(load_split(moved, "PublicTest"))}
    action, why = training_plan(run_dir, cfg, fps)
    assert action == "skip" and "the same images" in why and "moved.csv.gz" in why
    assert training_plan(run_dir, cfg, {**fps, "train": {**fps["train"], "sha256": "0" * 64}})[0] == "replace"
    assert _export_is_current(out / "exports" / "fer_nano", sha256_path(run_dir / "best.pt"), Path(moved), 56,
                              fps["train"]["sha256"])


def test_a_rerun_remeasures_retrains_and_labels_what_it_should(first_run, synthetic_csv, tmp_path, capsys):
    """One rerun of a leaderboard folder whose fer_nano best.pt is truncated, and whose simple_cnn bench lacks its
    INT8 row, with a byte-identical copy of a shipped weight as an extra."""
    import shutil

    from fer_edge.weights import PRETRAINED

    _, src, _, _, _ = first_run
    out = _copy_out(src, tmp_path / "lb")
    best = out / "runs" / "fer_nano" / "best.pt"
    best.write_bytes(best.read_bytes()[:200])
    report = out / "bench" / "simple_cnn" / "report.json"
    stored = json.loads(report.read_text())
    stored["rows"] = [r for r in stored["rows"] if r["precision"] != "int8"]
    report.write_text(json.dumps(stored))
    shipped = next(iter(PRETRAINED))
    copy = Path(shutil.copy(PRETRAINED[shipped].path, tmp_path / "copy.pt"))
    capsys.readouterr()
    rc, _ = _run(["--data", synthetic_csv, "--out", out, "--models", ",".join(MODELS), *TINY,
                  "--extra", f"mine={copy}"], tmp_path / "cache")
    err = " ".join(capsys.readouterr().err.split())
    doc = _strict_json(out / "leaderboard.json")
    rows = {r["name"]: r for r in doc["rows"]}
    assert rc == 0, err
    assert "not reused: the earlier bench did not measure ONNX Runtime INT8" in err
    assert not rows["simple_cnn"]["bench_reused"] and rows["simple_cnn"]["training"] == "reused"
    assert "fer_nano: best.pt is not a readable checkpoint" in err
    assert rows["fer_nano"]["training"] == "trained" and rows["fer_nano"]["status"] == "ok"
    assert len(list((out / "runs").glob("fer_nano.replaced-*"))) == 1
    for m in MODELS:
        _check_measured(rows[m])
    assert rows["mine"]["recipe"] == "shipped, full recipe" and rows["mine"]["status"] == "ok"


def test_every_option_problem_is_listed_even_beside_a_non_finite_float(synthetic_csv, tmp_path, capsys):
    assert main(["--data", str(synthetic_csv), "--out", str(tmp_path), "--models", "fer_nano", "--lr", "nan",
                 "--ema", "-1", "--extra", str(tmp_path / "nope.pt")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--lr must be a finite number" in err and "--ema" in err.split("--lr must be a finite number")[1]
    assert "nope.pt" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_data_without_the_default_splits_says_what_the_leaderboard_needs(synthetic_arrays, tmp_path, capsys):
    from fer_edge.data.synthetic import write_csv

    data = write_csv(tmp_path / "train_only.csv", {"Training": synthetic_arrays["Training"]})
    assert main(["--data", str(data), "--out", str(tmp_path / "lb"), "--models", "fer_nano", *TINY]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "must hold a 'Training' and a 'PublicTest' split" in err
    assert "--val-split" not in err and "fer-edge train" not in err and "Traceback" not in err


def test_ctrl_c_during_training_is_reported_once(synthetic_csv, tmp_path, capsys, monkeypatch):
    from fer_edge.training.trainer import Trainer

    def stop(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_write_metrics", stop)
    assert main(["--data", str(synthetic_csv), "--out", str(tmp_path / "lb"), "--models", "fer_nano", *TINY]) == 130
    err = capsys.readouterr().err
    assert err.count("interrupted") == 1 and "rerunning the same command" in " ".join(err.split()), err


def test_an_export_folder_with_an_unreadable_manifest_is_moved_aside_and_exported_again(first_run, synthetic_csv,
                                                                                      tmp_path):
    """fer-edge export now refuses an unreadable manifest even with replace_other, so the leaderboard's own export
    folder with one failed the model on every rerun."""
    from fer_edge.benchmarks.leaderboard import export_entry
    from fer_edge.utils import sha256_path

    _, out, _, _, _ = first_run
    ckpt = out / "runs" / "fer_nano" / "best.pt"
    export_dir = tmp_path / "exports" / "fer_nano"
    export_dir.mkdir(parents=True)
    (export_dir / "manifest.json").write_text("{not json")
    lines: list[str] = []
    export_entry(ckpt, sha256_path(ckpt), export_dir, synthetic_csv, 16, lines.append, "fer_nano")
    aside = [p for p in (tmp_path / "exports").iterdir() if p.name.startswith("fer_nano.replaced-")]
    assert len(aside) == 1 and (aside[0] / "manifest.json").read_text() == "{not json"
    assert any("not a readable manifest" in line and f"moved {export_dir} to {aside[0]}" in line for line in lines)
    assert {p.name for p in export_dir.iterdir()} >= {"manifest.json", "fer_nano_fp32.onnx", "fer_nano_int8.onnx"}


def test_an_empty_data_or_out_is_refused_not_read_as_the_current_folder(synthetic_csv, tmp_path, capsys,
                                                                         monkeypatch):
    """QA: ``--data ""`` passed the existence check (``Path("")`` is the current folder) and ``--out ""`` the
    writable-folder check, so the leaderboard read or wrote the working folder."""
    monkeypatch.chdir(tmp_path)
    assert main(["--data", "", "--out", "", "--models", "fer_nano"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--data is empty: give a path" in err and "--out is empty: give a path" in err, err
    assert not any(tmp_path.iterdir())
