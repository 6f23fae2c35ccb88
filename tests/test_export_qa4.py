"""QA round 4 on `fer-edge export`, the parity gate and the runtime API: each test fails without its fix."""
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fer_edge.errors import OptionError
from fer_edge.targets import TARGETS
from test_export import SYNTHETIC_GATE_MIN, _other_checkpoint, export_all


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_checkpoint, synthetic_csv):
    return export_all(tmp_path_factory, tiny_checkpoint, synthetic_csv)


@pytest.fixture(autouse=True)
def _gate_minimum_for_synthetic_data(monkeypatch):
    from fer_edge.exporters import calibration

    monkeypatch.setattr(calibration, "MIN_VAL_SIZE", SYNTHETIC_GATE_MIN)


def _cli(*args):
    from fer_edge.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})


def _text(res) -> str:
    return " ".join(res.output.split())


def fer_edge_sha(path) -> str:
    from fer_edge.utils import sha256_path

    return sha256_path(path)


def _parse(argv: list[str]):
    """The parameters click gives the ``fer-edge`` command line ``argv`` (its subcommand's), without running it."""
    import typer

    from fer_edge.cli import app

    assert argv[0] == "fer-edge", argv
    command = typer.main.get_command(app).commands[argv[1]]
    return command.make_context(argv[1], argv[2:]).params


# --- 1. a `next:` line runs when a path in it starts with "-" ----------------------------------------------------
def test_the_next_lines_name_a_folder_and_data_starting_with_a_dash(monkeypatch, tiny_checkpoint, synthetic_csv,
                                                                    tmp_path):
    """QA: `--out ./-e` printed `fer-edge bench -e ...`, which fails pasted (`No such option: -e`): pathlib drops
    the ./ and shlex.quote does not stop option parsing."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(synthetic_csv, tmp_path / "-val.csv.gz")
    res = _cli("export", tiny_checkpoint, "-t", "torchscript", "-p", "fp32", "--val-data", "./-val.csv.gz",
               "--out", "./-e")
    assert res.exit_code == 0, res.output
    lines = {line.split()[1]: shlex.split(line, comments=True) for line in res.stderr.splitlines()
             if line.startswith("  fer-edge ")}
    bench = _parse(lines["bench"])
    assert [Path(p) for p in bench["artifacts"]] == [Path("-e")], lines["bench"]
    assert Path(bench["data"]).resolve() == (tmp_path / "-val.csv.gz").resolve()
    predict = _parse(lines["predict"])
    assert Path(predict["model"]) == Path("-e") / "fer_nano_fp32.ts" and Path(predict["model"]).is_file()


def test_shell_path_keeps_a_leading_dash_a_path():
    from fer_edge.cli.export import shell_path

    assert shell_path(Path("-e")) == "./-e" and shell_path("-my out/x.ts") == "'./-my out/x.ts'"
    assert shell_path("/abs/-e") == "/abs/-e" and shell_path("out") == "out" and shell_path("a b") == "'a b'"


# --- 2. the `interrupted:` note says what this run did, not what an older export left -----------------------------
def _interrupt_loading(monkeypatch):
    """An interrupt while the validation images are loaded: before the first export step."""
    from fer_edge.exporters import api

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(api._cal, "load_validation", interrupted)


def test_an_interrupt_before_the_first_step_does_not_claim_an_earlier_unfinished_export(
        monkeypatch, tiny_checkpoint, synthetic_csv, tmp_path):
    """QA (A): a folder holding an earlier interrupted run's manifest ("complete": false, 5 artifacts); an export
    into it interrupted while it loaded its data said `manifest.json lists the 5 artifact(s) this export
    finished`, though it left the manifest as it was."""
    from fer_edge.exporters import export
    from fer_edge.exporters.onnx import OnnxExporter

    out = tmp_path / "i5"

    def stop(self, req, precision, out_path):
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(OnnxExporter, "export", stop)
        export(tiny_checkpoint, ["torchscript", "onnx"], ["fp32"], out, validate=False)
    before = (out / "manifest.json").read_bytes()
    assert json.loads(before)["complete"] is False and len(json.loads(before)["artifacts"]) == 1

    _interrupt_loading(monkeypatch)
    res = _cli("export", tiny_checkpoint, "-t", "torchscript", "-p", "fp32", "--val-data", synthetic_csv,
               "--out", out)
    assert res.exit_code == 130, res.output
    assert (out / "manifest.json").read_bytes() == before  # this run wrote nothing
    text = _text(res)
    assert "this export finished" not in text, text
    assert (f"interrupted: no artifact finished; {out / 'manifest.json'} is as it was: it lists the 1 artifact(s) "
            "of an earlier unfinished (\"complete\": false) export of this checkpoint") in text, text


def test_an_interrupt_before_the_first_step_names_another_checkpoints_export_as_such(
        monkeypatch, tiny_checkpoint, synthetic_csv, tmp_path):
    """QA (B): a folder holding another checkpoint's export; `--replace` interrupted while it loaded its data said
    `manifest.json lists the artifacts of the previous export of this checkpoint`."""
    from fer_edge.exporters import export

    other = _other_checkpoint(tmp_path)
    out = tmp_path / "r2"
    export(other, ["torchscript"], ["fp32"], out, validate=False)
    before = (out / "manifest.json").read_bytes()

    _interrupt_loading(monkeypatch)
    res = _cli("export", tiny_checkpoint, "-t", "torchscript", "-p", "fp32", "--val-data", synthetic_csv,
               "--out", out, "--replace")
    assert res.exit_code == 130, res.output
    assert (out / "manifest.json").read_bytes() == before
    text = _text(res)
    sha = json.loads(before)["source"]["sha256"]
    assert "this checkpoint" not in text, text
    assert (f"no artifact finished; {out / 'manifest.json'} is as it was: it lists the 1 artifact(s) of an earlier "
            f"export of another checkpoint, {other.resolve()} (sha256 {sha[:12]})") in text, text


def test_an_interrupt_after_replace_cleared_the_folder_says_so(monkeypatch, tiny_checkpoint, tmp_path):
    from fer_edge.exporters import api, export

    other = _other_checkpoint(tmp_path)
    out = tmp_path / "r3"
    export(other, ["torchscript"], ["fp32"], out, validate=False)

    def interrupted(*a, **k):  # right after --replace removed the other checkpoint's export
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "_run_plan", interrupted)
    res = _cli("export", tiny_checkpoint, "-t", "torchscript", "--no-validate", "--out", out, "--replace")
    assert res.exit_code == 130, res.output
    assert not (out / "manifest.json").exists()
    text = _text(res)
    sha = fer_edge_sha(other)
    assert (f"interrupted: no artifact finished; nothing listed in {out}: the earlier export's manifest (of another "
            f"checkpoint, {other.resolve()} (sha256 {sha[:12]})) was removed by --replace") in text, text


def test_an_interrupted_rerun_that_finished_nothing_says_so(monkeypatch, tiny_checkpoint, tmp_path):
    """A rerun stopped in its first step rewrites the manifest (this run's, keeping the earlier entries): it says
    it finished none, and lists the kept one as the earlier export's; one that finished an artifact names it."""
    from fer_edge.exporters import export
    from fer_edge.exporters.onnx import OnnxExporter

    out = tmp_path / "o"
    export(tiny_checkpoint, ["torchscript"], ["fp32"], out, validate=False)

    def stop(self, req, precision, out_path):
        raise KeyboardInterrupt

    monkeypatch.setattr(OnnxExporter, "export", stop)
    res = _cli("export", tiny_checkpoint, "-t", "onnx", "-p", "fp32", "--no-validate", "--out", out)
    assert res.exit_code == 130, res.output
    text = _text(res)
    assert (f"no artifact finished; {out / 'manifest.json'} lists the 1 artifact(s) of earlier exports of this "
            "checkpoint, kept by this one") in text, text

    res = _cli("export", tiny_checkpoint, "-t", "torchscript,onnx", "-p", "fp32", "--no-validate", "--out",
               tmp_path / "n")
    assert res.exit_code == 130, res.output
    assert "lists the 1 artifact(s) this export finished (" in _text(res) and \
        "this export's: fer_nano_fp32.ts;" in _text(res), _text(res)


# --- 3. a limit of 0 on the logit difference is "at most 0", as the KL's ----------------------------------------
def test_every_maximum_of_the_gate_is_inclusive():
    """QA: `--max-abs-diff fp32=0` failed a bit-identical artifact (`max |logit diff| 0 >= 0`) while
    `--max-kl fp32=0` passed it: the abs-diff check was strict."""
    from fer_edge.parity import Thresholds, check, compare

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(16, 7)).astype(np.float32)
    labels = ref.argmax(1)
    same = compare(ref, ref.copy(), labels)
    zero = Thresholds(min_agreement=1.0, max_abs_diff=0.0, max_kl=0.0, max_accuracy_drop=0.0)
    assert same.max_abs_diff == 0.0 and check(same, "fp32", zero) == []
    off = ref.copy()
    off[0, 0] += 0.5  # exactly representable: max |diff| is 0.5
    stats = compare(ref, off, labels)
    assert stats.max_abs_diff == 0.5
    assert check(stats, "fp32", Thresholds(max_abs_diff=0.5)) == []
    assert check(stats, "fp32", Thresholds(max_abs_diff=0.25)) == ["max |logit diff| 0.5 > 0.25"]


def test_max_abs_diff_zero_passes_a_bit_identical_torchscript_artifact(tiny_checkpoint, synthetic_csv, tmp_path):
    res = _cli("export", tiny_checkpoint, "-t", "torchscript", "-p", "fp32", "--val-data", synthetic_csv,
               "--out", tmp_path / "o", "--max-abs-diff", "fp32=0")
    assert res.exit_code == 0, res.output
    (entry,) = json.loads((tmp_path / "o" / "manifest.json").read_text())["artifacts"]
    assert entry["validation"]["max_abs_diff"] == 0.0 and entry["validation"]["status"] == "passed", entry


# --- 4. the runtime API refuses a bad batch_hint, and takes a tensor that requires grad ---------------------------
@pytest.mark.parametrize("target", ["openvino", "onnx", "torchscript"])
@pytest.mark.parametrize("hint", ["x", [1], 2.5, 0, -1, True])
def test_a_batch_hint_that_is_no_whole_number_of_at_least_1_is_an_option_error(exported, target, hint):
    """QA: OpenVINO's int() raised ValueError for "x" and TypeError for [1], and took 2.5 as 2."""
    from fer_edge.runtimes import load_runtime

    path = exported.out_dir / TARGETS[target].filename("fer_nano", "fp32")
    with pytest.raises(OptionError, match=r"batch_hint must be a whole number >= 1"):
        load_runtime(path, batch_hint=hint)


def test_a_batch_hint_of_none_or_a_numpy_integer_is_taken(exported):
    from fer_edge.runtimes import load_runtime

    path = exported.out_dir / TARGETS["openvino"].filename("fer_nano", "fp32")
    assert load_runtime(path, batch_hint=None).batch_hint == 1
    rt = load_runtime(path, batch_hint=np.int64(8))
    assert rt.batch_hint == 8 and type(rt.batch_hint) is int
    assert "THROUGHPUT" in str(rt.describe()["performance_hint"]).upper()


@pytest.mark.parametrize("target", ["onnx", "torchscript", "openvino", "pytorch"])
def test_a_tensor_that_requires_grad_runs_as_its_detached_copy(exported, tiny_checkpoint, target):
    """QA: ONNX Runtime and TorchScript raised `Can't call numpy() on Tensor that requires grad`."""
    import torch

    from fer_edge.runtimes import load_runtime

    path = tiny_checkpoint if target == "pytorch" else exported.out_dir / TARGETS[target].filename("fer_nano", "fp32")
    rt = load_runtime(path)
    x = torch.randn(2, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    want = rt.run(x.numpy())
    got = rt.run(x.clone().requires_grad_(True))
    assert got.shape == (2, 7) and np.array_equal(got, want)
    assert np.array_equal(rt.run(x[0].to(torch.bfloat16)), rt.run(x[0].to(torch.bfloat16).float().numpy()))
