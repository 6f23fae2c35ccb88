"""The parity thresholds are validated in one place (fer_edge.parity): finite numbers in range, known names and
precisions, every problem listed at once; export, bench (via resolve_gate) and the weight gates all use it."""
from __future__ import annotations

import math

import pytest

from fer_edge import parity
from fer_edge.errors import FerEdgeError
from fer_edge.parity import Thresholds
from fer_edge.targets import Precision

SHA = "0" * 64  # no shipped weight has it: resolve_gate starts from the defaults


@pytest.mark.parametrize(
    "table,msg",
    [
        ({"int8": {"min_agreement": 2}}, "int8.min_agreement: 2 is out of range (must be between 0 and 1)"),
        ({"int8": {"min_agreement": math.nan}}, "int8.min_agreement: nan is not a finite number"),
        ({"fp32": {"max_abs_diff": -1e-3}}, "fp32.max_abs_diff: -0.001 is out of range (must be >= 0)"),
        ({"fp32": {"max_kl": math.inf}}, "fp32.max_kl: inf is not a finite number"),
        ({"int8": {"max_accuracy_drop": 1.01}}, "int8.max_accuracy_drop: 1.01 is out of range"),
        ({"int8": {"max_accuracy_drop": "0.01"}}, "expected a number or null, got '0.01'"),
        ({"int4": {"min_agreement": 0.9}}, "unknown precision 'int4'"),
        ({"int8": {"min_accuracy": 0.9}}, "unknown threshold 'min_accuracy'"),
        ({"fp32": 0.5}, "fp32: expected {threshold: value} or a Thresholds, got 0.5"),
        (0.5, "got 0.5"),
    ],
)
def test_threshold_problems(table, msg):
    problems = parity.threshold_problems(table)
    assert any(msg in p for p in problems), problems
    with pytest.raises(FerEdgeError, match="invalid parity thresholds"):
        parity.validate_thresholds(table)


def test_valid_tables_have_no_problems_including_the_range_ends():
    assert parity.threshold_problems(parity.DEFAULT_THRESHOLDS) == []
    assert parity.threshold_problems({"int8": {"min_agreement": 0, "max_accuracy_drop": 1, "max_kl": None},
                                      Precision.fp32: {"min_agreement": 1.0, "max_abs_diff": 0.0},
                                      "fp16": Thresholds(max_kl=3.0)}) == []
    assert parity.threshold_problems(Thresholds(min_agreement=0.5)) == []
    assert parity.threshold_problems(None) == [] and parity.overrides_problems(None) == []


def test_every_problem_is_listed_at_once():
    with pytest.raises(FerEdgeError) as info:
        parity.with_overrides({"min_agreement": {"int8": 2, "int4": 0.9, "fp16": math.nan},
                               "max_kl": {"fp32": -1}, "min_accuracy": {"int8": 0.5}})
    msg = str(info.value)
    assert msg.startswith("invalid threshold overrides: ")
    for part in ("int8.min_agreement: 2", "unknown precision 'int4'", "fp16.min_agreement: nan",
                 "fp32.max_kl: -1", "unknown threshold 'min_accuracy'"):
        assert part in msg, msg


def test_thresholds_objects_refuse_bad_values_when_made():
    with pytest.raises(FerEdgeError) as info:
        Thresholds(min_agreement=math.nan, max_kl=-1)
    assert "min_agreement: nan is not a finite number" in str(info.value)
    assert "max_kl: -1 is out of range" in str(info.value)
    with pytest.raises(FerEdgeError, match="between 0 and 1"):
        parity.check(parity.compare([[1.0, 0.0]], [[1.0, 0.0]]), "fp32", Thresholds(min_agreement=1.5))


@pytest.mark.parametrize(
    "overrides,msg",
    [
        ({"min_agreement": {"fp32": math.nan}}, "fp32.min_agreement: nan is not a finite number"),
        ({"min_agreement": {"int8": 2.0}}, "int8.min_agreement: 2.0 is out of range"),
        ({"max_abs_diff": {"int4": 1.0}}, "unknown precision 'int4'"),  # was a bare ValueError
        ({"max_kl": 0.5}, "max_kl: expected {precision: value}, got 0.5"),  # was an AttributeError
    ],
)
def test_resolve_gate_refuses_bad_overrides(overrides, msg):
    """resolve_gate is what export and bench resolve their gate with."""
    with pytest.raises(FerEdgeError) as info:
        parity.resolve_gate(SHA, None, overrides)
    assert msg in str(info.value)


def test_resolve_gate_refuses_a_caller_table_of_the_wrong_type_and_normalises_a_valid_one():
    with pytest.raises(FerEdgeError, match="fp32: expected {threshold: value} or a Thresholds, got 0.5"):
        parity.resolve_gate(SHA, {"fp32": 0.5})
    with pytest.raises(FerEdgeError, match="got 0.5"):
        parity.resolve_gate(SHA, 0.5)
    with pytest.raises(FerEdgeError, match="nan is not a finite number"):
        parity.resolve_gate(SHA, {"int8": {"min_agreement": math.nan}})
    table, record = parity.resolve_gate(SHA, {"fp32": {"max_abs_diff": 1}, "int8": Thresholds(min_agreement=0.5)})
    assert table == {Precision.fp32: Thresholds(max_abs_diff=1.0), Precision.int8: Thresholds(min_agreement=0.5)}
    assert record["caller_table"]
    assert parity.resolve_thresholds(table, "fp16") == parity.DEFAULT_THRESHOLDS[Precision.fp16]
    assert parity.resolve_thresholds({"fp32": {"max_kl": 0.1}}, "fp32") == Thresholds(max_kl=0.1)
    # overrides still apply over the defaults, and stay numbers
    table, record = parity.resolve_gate(SHA, None, {"min_agreement": {"int8": 1}})
    assert table[Precision.int8].min_agreement == 1.0 and record["overrides"] == {"min_agreement": {"int8": 1}}


def test_resolve_gate_refuses_a_shipped_weights_invalid_gate(monkeypatch, tmp_path):
    import fer_edge.weights as weights
    from fer_edge.weights import WeightMeta

    meta = WeightMeta(name="bad", architecture="fer_nano", file="bad.pt", params=1, macs=1, mean=0.5, std=0.25,
                      parity_gate={"int8": {"min_agreement": math.nan}}, parity_gate_reason="r")
    monkeypatch.setattr(weights, "shipped_with_sha", lambda sha: meta)
    with pytest.raises(FerEdgeError, match="shipped weight 'bad'.*int8.min_agreement: nan"):
        parity.resolve_gate(SHA)


def test_export_refuses_bad_thresholds_before_writing_anything(tiny_checkpoint, synthetic_csv, tmp_path):
    from fer_edge.exporters import export

    for kwargs, msg in (
        ({"threshold_overrides": {"min_agreement": {"fp32": math.nan}}}, "fp32.min_agreement: nan"),
        ({"thresholds": {"fp32": 0.5}}, "fp32: expected {threshold: value}"),
        ({"thresholds": {"fp32": {"max_abs_diff": -1}}}, "fp32.max_abs_diff: -1 is out of range"),
    ):
        out = tmp_path / "out"
        with pytest.raises(FerEdgeError) as info:
            export(tiny_checkpoint, ["torchscript"], ["fp32"], out, val_data=synthetic_csv, data_progress=False,
                   **kwargs)
        assert msg in str(info.value)
        assert not out.exists()


def test_export_cli_refuses_an_agreement_above_one(tiny_checkpoint, synthetic_csv, tmp_path):
    from typer.testing import CliRunner

    from fer_edge.cli import app

    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "torchscript", "-p", "fp32",
                                   "--val-data", str(synthetic_csv), "--out", str(out), "--min-agreement", "int8=2"])
    assert res.exit_code == 2 and "--min-agreement: 'int8=2' must be between 0 and 1" in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()
