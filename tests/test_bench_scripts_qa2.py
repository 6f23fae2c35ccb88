"""The benchmark scripts (second QA pass): an empty path or model (a script's unset variable) is a usage error
naming the option, not the current folder or the default; every bad option is listed in one error."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

runner = CliRunner()


def _never(*a, **k):
    raise AssertionError("the work started before the options were checked")


def _text(out: str) -> str:
    """Output on one line, without the borders of rich's usage-error panel."""
    return " ".join(out.replace("│", " ").replace("╭", " ").replace("╰", " ").split())


# --- 1. an empty path is refused, naming the option (exit 2), before any work --------------------------------
@pytest.mark.parametrize("script, args, option", [
    ("step_cost", ["--data", ""], "'--data'"),
    ("train_throughput", ["--data", ""], "'--data'"),
    ("distill_speed", ["--data", ""], "'--data'"),
    ("ort_int8", ["ART", "--data", ""], "'--data'"),
    ("ort_int8", [""], "'ARTIFACT'"),
])
def test_typer_scripts_refuse_an_empty_path(script, args, option, tmp_path, monkeypatch):
    """QA: --data "" read the current folder ("<cwd> has no 'train' split", exit 1); ort_int8 "" searched it."""
    import importlib

    import fer_edge.data

    mod = importlib.import_module(f"fer_edge.benchmarks.{script}")
    monkeypatch.setattr(fer_edge.data, "load_split", _never)
    art = tmp_path / "a_int8.onnx"
    art.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(mod.cli, [str(art) if a == "ART" else a for a in args])
    out = _text(r.output)
    assert r.exit_code == 2 and f"Invalid value for {option}: is empty: give a path" in out, out


@pytest.mark.parametrize("args, msg", [
    (["CKPT", "--calib-data", "CSV", "--out", ""], "--out is empty: give a path"),
    (["CKPT", "--calib-data", ""], "--calib-data is empty: give a path"),
    (["CKPT", "--calib-data", "CSV", "--val-data", ""], "--val-data is empty: give a path"),
    (["CKPT", "--calib-data", "CSV", "--json", ""], "--json is empty: give a file path"),
    (["CKPT", "--calib-data", "CSV", "--val-split", ""], "--val-split is empty: name a split"),
    (["", "--calib-data", "CSV"], "CHECKPOINT is empty: give a checkpoint path or shipped model name"),
])
def test_export_bench_refuses_an_empty_path(args, msg, tiny_checkpoint, synthetic_csv, tmp_path, monkeypatch,
                                            capsys):
    """QA: --out "" exported into ./all/ of the working folder, exit 0."""
    from fer_edge.benchmarks import export_bench

    monkeypatch.setattr(export_bench, "run", _never)
    monkeypatch.chdir(tmp_path)
    subst = {"CKPT": str(tiny_checkpoint), "CSV": str(synthetic_csv)}
    assert export_bench.main([subst.get(a, a) for a in args]) == 2
    err = _text(capsys.readouterr().err)
    assert err.startswith("error: ") and msg in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written into the working folder


@pytest.mark.parametrize("args, msg", [
    (["--val-data", ""], "--val-data is empty: give a path"),
    (["--json", ""], "--json is empty: give a file path"),
    (["--calib-data", ""], "--calib-data is empty: give a path"),
])
def test_int8_sensitivity_refuses_an_empty_path(args, msg, tiny_checkpoint, synthetic_csv, monkeypatch, capsys):
    """QA: --val-data "" measured on the calibration data's validation split (the default)."""
    from fer_edge.benchmarks import int8_sensitivity

    monkeypatch.setattr(int8_sensitivity, "sensitivity", _never)
    assert int8_sensitivity.main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), *args]) == 2
    err = _text(capsys.readouterr().err)
    assert err.startswith("error: ") and msg in err, err


def test_distill_speed_refuses_an_empty_teacher(synthetic_csv, monkeypatch):
    from fer_edge.benchmarks import distill_speed

    monkeypatch.setattr(distill_speed, "distill_run", _never)
    r = runner.invoke(distill_speed.cli, ["--data", str(synthetic_csv), "--teacher", ""])
    assert r.exit_code == 2 and "--teacher is empty: give a checkpoint path" in _text(r.stderr), r.output


# --- 2. every bad option in one error ----------------------------------------------------------------------
def test_export_bench_lists_every_bad_option_at_once(tiny_checkpoint, synthetic_csv, tmp_path, monkeypatch, capsys):
    """QA: --out afile --calib-methods bogus --calib-size 0 named only --out, exit 1."""
    from fer_edge.benchmarks import export_bench

    monkeypatch.setattr(export_bench, "run", _never)
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = [str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--out", str(afile)]
    assert export_bench.main([*base, "--calib-methods", "bogus", "--calib-size", "0", "--val-size", "3"]) == 2
    err = _text(capsys.readouterr().err)
    for msg in ("unknown calibration method 'bogus'", "--calib-size must be at least 1 (got 0)",
                "(got --val-size 3", f"--out {afile} is a file, not a folder"):
        assert msg in err, err
    assert err.count("error: ") == 1
    # on its own, a file in the way of --out is the machine's state, as for --json and fer-edge export's --out
    assert export_bench.main(base) == 1
    assert f"--out {afile} is a file" in capsys.readouterr().err


def test_int8_sensitivity_lists_every_bad_option_at_once(tiny_checkpoint, synthetic_csv, tmp_path, monkeypatch,
                                                         capsys):
    from fer_edge.benchmarks import int8_sensitivity

    monkeypatch.setattr(int8_sensitivity, "sensitivity", _never)
    assert int8_sensitivity.main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--val-data", "",
                                  "--calib-size", "0", "--json", str(tmp_path)]) == 2
    err = _text(capsys.readouterr().err)
    for msg in ("--val-data is empty", "--calib-size must be a whole number of at least 1 (got 0)",
                f"--json '{tmp_path}' is a folder"):
        assert msg in err, err


def test_distill_speed_lists_every_bad_option_at_once(synthetic_csv, monkeypatch):
    """QA: --student bogus --teacher bogus --amp fp8 named only --student."""
    import fer_edge.data
    from fer_edge.benchmarks import distill_speed

    monkeypatch.setattr(distill_speed, "distill_run", _never)
    monkeypatch.setattr(fer_edge.data, "load_split", _never)
    r = runner.invoke(distill_speed.cli, ["--data", str(synthetic_csv), "--student", "bogus", "--teacher",
                                          "no/such.pt", "--amp", "fp8"])
    err = _text(r.stderr)
    assert r.exit_code == 2 and err.count("error: ") == 1, r.output
    for msg in ("--student: unknown model 'bogus'", "--amp 'fp8': valid:",
                "--teacher: no/such.pt: no such checkpoint file"):
        assert msg in err, err
    # a teacher that cannot be read, on its own, stays exit 1
    r = runner.invoke(distill_speed.cli, ["--data", str(synthetic_csv), "--teacher", "no/such.pt"])
    assert r.exit_code == 1 and "--teacher: no/such.pt: no such checkpoint file" in _text(r.stderr), r.output


def test_resize_parity_refuses_an_empty_data_as_a_usage_error(tiny_checkpoint):
    """``--data ""`` was "no data given" with exit 1, where the other scripts' empty paths are usage errors."""
    from typer.testing import CliRunner

    from fer_edge.benchmarks import resize_parity

    r = CliRunner().invoke(resize_parity.cli, [str(tiny_checkpoint), "--data", ""])
    assert r.exit_code == 2, r.output
    assert "--data" in r.output and "is empty" in " ".join(r.output.split()), r.output


def test_an_unknown_list_value_names_its_option():
    from fer_edge.cli.common import parse_csv_option
    from fer_edge.errors import OptionError

    with pytest.raises(OptionError, match=r"^--calib-methods: unknown calibration method 'bogus'; valid: minmax"):
        parse_csv_option("minmax,bogus", ["minmax", "entropy"], "calibration method", option="--calib-methods")


def test_distill_speed_refuses_a_teacher_given_twice_before_measuring(synthetic_csv, monkeypatch):
    """The training it times refuses a teacher given twice: that was found only when the first run started."""
    import fer_edge.data
    from fer_edge.benchmarks import distill_speed

    monkeypatch.setattr(distill_speed, "distill_run", _never)
    monkeypatch.setattr(fer_edge.data, "load_split", _never)
    r = runner.invoke(distill_speed.cli, ["--data", str(synthetic_csv), "--teacher", "nano", "--teacher", "nano"])
    assert r.exit_code == 2, r.output
    assert "--teacher nano is given twice" in _text(r.stderr), r.output
