"""The shipped pretrained weights: loadable, consistent with their metadata, deterministic, accurate."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fer_edge.checkpoint import load_checkpoint
from fer_edge.constants import LABELS
from fer_edge.errors import CheckpointError
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


# --- a weight's own parity gate -----------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED)
def test_weight_gate_is_valid_and_never_looser_on_accuracy(name):
    from fer_edge.parity import DEFAULT_THRESHOLDS, with_overrides
    from fer_edge.weights import check_parity_gate

    meta = PRETRAINED[name]
    check_parity_gate(meta.parity_gate, meta.parity_gate_reason)
    table = with_overrides(meta.gate_overrides())
    for precision, t in table.items():
        # a weight may accept more flips, never a bigger accuracy loss or an unchecked one
        default = DEFAULT_THRESHOLDS[precision].max_accuracy_drop
        if default is not None:
            assert t.max_accuracy_drop is not None and t.max_accuracy_drop <= default


@pytest.mark.parametrize(
    "gate,reason,msg",
    [
        ({"int4": {"min_agreement": 0.9}}, "why", "unknown precision 'int4'"),
        ({"int8": {"min_accuracy": 0.9}}, "why", "unknown threshold 'min_accuracy'"),
        ({"int8": {"min_agreement": "high"}}, "why", "expected a number"),
        ({"int8": 0.97}, "why", "expected {threshold: value}"),
        ({"int8": {"min_agreement": 0.97}}, " ", "needs a reason"),
    ],
)
def test_invalid_weight_gates_are_refused(gate, reason, msg):
    from fer_edge.errors import FerEdgeError
    from fer_edge.weights import check_parity_gate

    with pytest.raises(FerEdgeError, match=msg.replace("{", r"\{").replace("}", r"\}")):
        check_parity_gate(gate, reason)
    check_parity_gate({}, "")  # the defaults need no reason


def test_set_parity_gate_keeps_the_rest_of_the_entry(tmp_path, monkeypatch):
    import json
    import shutil

    import fer_edge.weights as weights
    import fer_edge.weights.ship as ship
    from fer_edge.errors import CheckpointError

    shutil.copy(weights.WEIGHTS_DIR / "weights.json", tmp_path / "weights.json")
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(ship, "WEIGHTS_DIR", tmp_path)
    before = {e["name"]: e for e in json.loads((tmp_path / "weights.json").read_text())}
    ship.set_parity_gate("small", {"fp16": {"min_agreement": 0.99}}, "measured: 99.5%")
    after = {e["name"]: e for e in json.loads((tmp_path / "weights.json").read_text())}
    assert after["small"]["parity_gate"] == {"fp16": {"min_agreement": 0.99}}
    assert after["small"]["parity_gate_reason"] == "measured: 99.5%"
    assert {k: v for k, v in after["small"].items() if not k.startswith("parity_gate")} == {
        k: v for k, v in before["small"].items() if not k.startswith("parity_gate")}
    assert after["nano"] == before["nano"]
    ship.set_parity_gate("small", {}, "")  # back to the defaults
    assert json.loads((tmp_path / "weights.json").read_text())[1]["parity_gate"] == {}
    with pytest.raises(CheckpointError, match="no shipped weight 'tiny'"):
        ship.set_parity_gate("tiny", {}, "")


def test_gate_cli_refuses_bad_json():
    from typer.testing import CliRunner

    from fer_edge.weights.gate import cli

    res = CliRunner().invoke(cli, ["nano", "--gate", "{int8: 0.97}"])
    assert res.exit_code == 2 and "not valid JSON" in res.output
    res = CliRunner().invoke(cli, ["nano", "--gate", '{"int8": {"min_agreement": 0.97}}'])
    assert res.exit_code == 2 and "needs a reason" in res.output  # a usage error


def test_shipped_with_sha_hashes_each_file_once_until_it_changes(tmp_path, monkeypatch):
    import dataclasses
    import hashlib

    import fer_edge.utils
    import fer_edge.weights as w

    meta = dataclasses.replace(PRETRAINED["nano"], file="w.pt")
    monkeypatch.setattr(w, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(w, "PRETRAINED", {"w": meta})
    calls = []
    real = fer_edge.utils.sha256_path
    monkeypatch.setattr(fer_edge.utils, "sha256_path", lambda p: calls.append(p) or real(p))
    w._file_sha256.cache_clear()
    (tmp_path / "w.pt").write_bytes(b"first")
    first = hashlib.sha256(b"first").hexdigest()
    assert w.shipped_with_sha(first) is meta and w.shipped_with_sha(first) is meta
    assert w.shipped_with_sha("0" * 64) is None and len(calls) == 1
    (tmp_path / "w.pt").write_bytes(b"second, longer")  # a changed file is hashed again
    assert w.shipped_with_sha(first) is None
    assert w.shipped_with_sha(hashlib.sha256(b"second, longer").hexdigest()) is meta and len(calls) == 2
    w._file_sha256.cache_clear()


README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("name", SHIPPED)
def test_readme_pretrained_table_matches_the_shipped_metadata(name):
    """The README's headline row for each weight is the figure weights.json records (so a new weight cannot ship
    with the old one's numbers in the README)."""
    meta = PRETRAINED[name]
    rows = [line for line in README.read_text().splitlines() if line.startswith(f"| `{name}` | `{meta.architecture}` |")]
    assert len(rows) == 1, f"README needs exactly one Pretrained models row for {name}"
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    params, top1, f1, tta = cells[2], cells[4], cells[5], cells[6]
    assert params == f"{meta.params:,}"
    assert top1.strip("*") == f"{100 * meta.metrics['val_accuracy']:.2f}%"
    assert f1 == f"{meta.metrics['val_macro_f1']:.3f}"
    assert tta == f"{100 * meta.metrics['val_accuracy_flip_tta']:.2f}%"


# --- shipping: every check before the weights folder changes -------------------------------------
SHIP_ARGS = ["--recipe", "fer-edge train ...", "--hardware", "test", "--train-time", "1 s"]


@pytest.fixture
def weights_copy(tmp_path, monkeypatch):
    """A copy of the shipped weights folder that ``ship``/``gate`` write into (the real one is never touched)."""
    import shutil

    import fer_edge.weights as weights
    import fer_edge.weights.ship as ship

    folder = tmp_path / "weights"
    folder.mkdir()
    for f in ("weights.json", *(m.file for m in PRETRAINED.values())):
        shutil.copy(weights.WEIGHTS_DIR / f, folder / f)
    monkeypatch.setattr(weights, "WEIGHTS_DIR", folder)
    monkeypatch.setattr(ship, "WEIGHTS_DIR", folder)
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _ship_cli(*args):
    from typer.testing import CliRunner

    from fer_edge.weights.ship import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_ship_over_the_size_limit_leaves_the_shipped_weight_and_its_entry_untouched(weights_copy, tiny_checkpoint,
                                                                                  monkeypatch):
    import fer_edge.weights.ship as ship

    before = _snapshot(weights_copy)
    monkeypatch.setattr(ship, "MAX_BYTES", 1024)  # tiny_checkpoint's file is bigger
    res = _ship_cli(tiny_checkpoint, "--name", "small", "--replace", *SHIP_ARGS)
    assert res.exit_code == 1 and "over the 1024-byte limit" in res.output, res.output
    assert "Traceback" not in res.output
    assert _snapshot(weights_copy) == before  # small.pt still there, unchanged; no temp debris; entry unchanged
    res = _ship_cli(tiny_checkpoint, "--name", "brand_new", *SHIP_ARGS)  # a new name: no file, no entry
    assert res.exit_code == 1 and _snapshot(weights_copy) == before


def test_ship_and_gate_refuse_the_weights_folder_of_an_installed_wheel(weights_copy, tiny_checkpoint, monkeypatch):
    """In site-packages the files are pip's: a shipped weight would be lost or orphaned by an upgrade or uninstall."""
    from typer.testing import CliRunner

    import fer_edge.weights.ship as ship
    from fer_edge.weights.gate import cli as gate_cli

    ship.check_source_checkout("ship")  # the folder the tests write into is no install: allowed
    before = _snapshot(weights_copy)
    monkeypatch.setattr(ship, "_site_dirs", lambda: [weights_copy.parent])  # as if weights_copy sat in site-packages
    res = _ship_cli(tiny_checkpoint, "--name", "tiny", *SHIP_ARGS)
    msg = " ".join(res.output.split())
    assert res.exit_code == 1 and "belongs to fer-edge installed in" in msg and "pip install -e" in msg, res.output
    res = CliRunner().invoke(gate_cli, ["nano", "--gate", "{}"])
    assert res.exit_code == 1 and "cannot change 'nano'" in " ".join(res.output.split()), res.output
    assert _snapshot(weights_copy) == before


def test_ship_refuses_to_replace_a_shipped_weight_without_replace(weights_copy, tiny_checkpoint):
    import json

    before = _snapshot(weights_copy)
    res = _ship_cli(tiny_checkpoint, "--name", "small", *SHIP_ARGS)
    assert res.exit_code == 1, res.output
    assert "already shipped as fer_small" in res.output and "fer_nano" in res.output
    assert "different architecture" in res.output and "--replace" in res.output
    assert _snapshot(weights_copy) == before

    # a new name ships without --replace; shipping it again (same architecture) needs --replace too
    res = _ship_cli(tiny_checkpoint, "--name", "tiny", *SHIP_ARGS)
    assert res.exit_code == 0, res.output
    assert (weights_copy / "tiny.pt").is_file()
    after_new = _snapshot(weights_copy)
    res = _ship_cli(tiny_checkpoint, "--name", "tiny", *SHIP_ARGS)
    assert res.exit_code == 1 and "'tiny' is already shipped (fer_nano)" in res.output, res.output
    assert _snapshot(weights_copy) == after_new

    # a file of that name not listed in weights.json is not overwritten either
    (weights_copy / "orphan.pt").write_bytes(b"someone's file")
    res = _ship_cli(tiny_checkpoint, "--name", "orphan", *SHIP_ARGS)
    assert res.exit_code == 1 and "already exists" in res.output
    assert (weights_copy / "orphan.pt").read_bytes() == b"someone's file"

    # with --replace it is replaced, and the architecture change is said
    res = _ship_cli(tiny_checkpoint, "--name", "small", "--replace", *SHIP_ARGS)
    assert res.exit_code == 0, res.output
    import os

    umask = os.umask(0)
    os.umask(umask)
    for f in ("small.pt", "tiny.pt", "weights.json"):  # readable as package data, not private temp files
        assert (weights_copy / f).stat().st_mode & 0o777 == 0o666 & ~umask, f
    assert "architecture fer_small -> fer_nano" in res.output
    entries = {e["name"]: e for e in json.loads((weights_copy / "weights.json").read_text())}
    assert entries["small"]["architecture"] == "fer_nano" and entries["small"]["file"] == "small.pt"
    assert load_checkpoint(weights_copy / "small.pt").model_name == "fer_nano"
    assert entries["nano"] == {e["name"]: e for e in json.loads(before["weights.json"])}["nano"]


@pytest.mark.parametrize("name", ["../../escaped", "", "a b/c", "a/b", "..", ".hidden", "a..b", "small.pt", "x.",
                                  "-x", "a\\b", "é", "a" * 65])
def test_ship_refuses_a_name_that_is_not_a_plain_stem_before_any_work(weights_copy, tmp_path, name):
    from fer_edge.errors import FerEdgeError
    from fer_edge.weights.ship import ship

    before = _snapshot(weights_copy)
    # the checkpoint does not even exist: the name is refused first
    with pytest.raises(FerEdgeError, match="--name"):
        ship(tmp_path / "missing.pt", name, "r", "h", "t")
    assert _snapshot(weights_copy) == before
    assert not list(tmp_path.rglob("escaped*"))


def test_ship_cli_refuses_an_escaping_name(weights_copy, tiny_checkpoint, tmp_path):
    before = _snapshot(weights_copy)
    for name in ("../../escaped", "", "a b/c"):
        res = _ship_cli(tiny_checkpoint, "--name", name, *SHIP_ARGS)
        assert res.exit_code == 2 and "is not a plain name" in res.output, (name, res.output)  # a usage error
    assert _snapshot(weights_copy) == before
    assert not list(tmp_path.rglob("escaped*")) and not (weights_copy / ".pt").exists()


@pytest.mark.parametrize(
    "gate,msg",
    [
        ({"int8": {"min_agreement": 2}}, "int8.min_agreement: 2 is out of range (must be between 0 and 1)"),
        ({"int8": {"min_agreement": -5}}, "int8.min_agreement: -5 is out of range"),
        ({"int8": {"min_agreement": float("nan")}}, "int8.min_agreement: nan is not a finite number"),
        ({"fp32": {"max_abs_diff": float("inf")}}, "fp32.max_abs_diff: inf is not a finite number"),
        ({"fp16": {"max_kl": -0.1}}, "fp16.max_kl: -0.1 is out of range (must be >= 0)"),
        ({"int8": {"max_accuracy_drop": 1.5}}, "int8.max_accuracy_drop: 1.5 is out of range"),
        ({"int8": {"max_abs_diff": True}}, "expected a number or null"),
    ],
)
def test_out_of_range_and_non_finite_gate_values_are_refused(gate, msg):
    from fer_edge.errors import FerEdgeError
    from fer_edge.weights import check_parity_gate

    with pytest.raises(FerEdgeError) as info:
        check_parity_gate(gate, "why")
    assert msg in str(info.value)


def test_every_gate_problem_is_listed_at_once():
    from fer_edge.errors import FerEdgeError
    from fer_edge.weights import check_parity_gate

    with pytest.raises(FerEdgeError) as info:
        check_parity_gate({"int4": {}, "int8": {"min_agreement": 2, "max_kl": float("nan"), "foo": 1},
                           "fp16": {"max_abs_diff": 0, "max_accuracy_drop": 1}}, "")
    msg = str(info.value)
    for part in ("unknown precision 'int4'", "int8.min_agreement: 2", "int8.max_kl: nan", "unknown threshold 'foo'",
                 "needs a reason"):
        assert part in msg
    assert "fp16" not in msg.replace("fp32, fp16, int8", "")  # the boundary values 0 and 1 are valid


def test_ship_and_gate_clis_refuse_bad_gate_values_and_write_nothing(weights_copy, tiny_checkpoint):
    from typer.testing import CliRunner

    from fer_edge.weights.gate import cli as gate_cli

    before = _snapshot(weights_copy)
    for gate in ('{"int8": {"min_agreement": 2}}', '{"int8": {"min_agreement": NaN}}',
                 '{"int8": {"min_agreement": -5}}'):
        res = _ship_cli(tiny_checkpoint, "--name", "tiny", *SHIP_ARGS, "--parity-gate", gate,
                        "--parity-gate-reason", "r")
        assert res.exit_code == 2 and "--parity-gate: int8.min_agreement" in res.output, res.output  # usage errors
        res = CliRunner().invoke(gate_cli, ["nano", "--gate", gate, "--reason", "r"])
        assert res.exit_code == 2 and "invalid parity gate: int8.min_agreement" in res.output, res.output
    assert _snapshot(weights_copy) == before
    # a valid one still goes through, and weights.json stays strict JSON
    res = CliRunner().invoke(gate_cli, ["nano", "--gate", '{"int8": {"min_agreement": 0.96}}', "--reason", "r"])
    assert res.exit_code == 0, res.output
    import json

    json.loads((weights_copy / "weights.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def test_ship_refuses_non_finite_metrics(weights_copy, tiny_checkpoint):
    before = _snapshot(weights_copy)
    res = _ship_cli(tiny_checkpoint, "--name", "tiny", *SHIP_ARGS, "--metrics-json", '{"val_accuracy": NaN}')
    assert res.exit_code == 2 and "val_accuracy is not a finite number" in res.output, res.output
    assert _snapshot(weights_copy) == before


@pytest.mark.parametrize("name", ["small", "brand_new"])
def test_ship_puts_the_file_back_when_its_entry_cannot_be_written(weights_copy, tiny_checkpoint, monkeypatch, name):
    """The file is renamed in first; if weights.json's rename then fails, the file is what it was before."""
    import os

    import fer_edge.utils as utils
    from fer_edge.weights.ship import ship

    before = _snapshot(weights_copy)
    real = os.replace

    def table_rename_fails(src, dst):
        if Path(dst).name == "weights.json":
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(utils.os, "replace", table_rename_fails)
    with pytest.raises(OSError, match="No space left"):
        ship(tiny_checkpoint, name, recipe="r", hardware="h", train_time="t", replace_existing=True)
    assert _snapshot(weights_copy) == before  # small.pt as it was; no brand_new.pt; no temp debris


@pytest.mark.parametrize("failing", ["copy", "aside", "place"])
def test_a_failure_at_any_step_of_the_commit_leaves_the_folder_as_it_was(weights_copy, tiny_checkpoint,
                                                                         monkeypatch, failing):
    """Before the entry is in, every failure (the copy into the folder, moving the earlier file aside, placing
    the new one) puts the folder back as it was: the earlier small.pt, its entry, no temp files."""
    import os
    import shutil as sh

    import fer_edge.weights.ship as ship_mod

    before = _snapshot(weights_copy)
    real_replace, real_copy = os.replace, sh.copyfile

    def replace(src, dst):
        src, dst = Path(src), Path(dst)
        if failing == "aside" and src.name == "small.pt":
            raise OSError(5, "I/O error")
        if failing == "place" and dst.name == "small.pt" and src.name.startswith(".tmp-"):
            raise OSError(5, "I/O error")
        return real_replace(src, dst)

    def copyfile(src, dst, **kw):
        if failing == "copy" and Path(dst).parent == weights_copy:
            raise OSError(28, "No space left on device")
        return real_copy(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(ship_mod.shutil, "copyfile", copyfile)
    with pytest.raises(OSError):
        ship_mod.ship(tiny_checkpoint, "small", recipe="r", hardware="h", train_time="t", replace_existing=True)
    assert _snapshot(weights_copy) == before


# --- what QA found: ship's metrics, checks and messages; a damaged weights.json ----------------------------------
def _crafted(tiny_checkpoint, tmp_path, **change) -> Path:
    import torch

    from fer_edge.checkpoint import save_checkpoint

    raw = torch.load(tiny_checkpoint, weights_only=True)
    return save_checkpoint(tmp_path / "crafted.pt", {**raw, **change})


def test_ship_refuses_metrics_that_are_not_plain_numbers_before_anything_changes(weights_copy, tiny_checkpoint,
                                                                                tmp_path):
    """A tensor metric shipped as the text "tensor(0.5000)", then the command failed with a traceback."""
    import torch

    before = _snapshot(weights_copy)
    ck = _crafted(tiny_checkpoint, tmp_path, metrics={"val_accuracy": torch.tensor(0.5)})
    res = _ship_cli(ck, "--name", "mt", *SHIP_ARGS)
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "metrics val_accuracy (Tensor) are not plain numbers or text" in out, res.output
    assert "Traceback" not in res.output and _snapshot(weights_copy) == before


def test_ship_refuses_a_model_whose_outputs_are_not_finite(weights_copy, tiny_checkpoint, tmp_path):
    import torch

    raw = torch.load(tiny_checkpoint, weights_only=True)
    sd = dict(raw["state_dict"])
    first = next(k for k, v in sd.items() if v.is_floating_point() and v.ndim == 4)
    sd[first] = torch.full_like(sd[first], float("nan"))
    before = _snapshot(weights_copy)
    res = _ship_cli(_crafted(tiny_checkpoint, tmp_path, state_dict=sd), "--name", "n", *SHIP_ARGS)
    assert res.exit_code == 1 and "outputs are not finite" in " ".join(res.output.split()), res.output
    assert _snapshot(weights_copy) == before


def test_ship_notes_each_metric_metrics_json_replaces_and_refuses_a_wrong_params(weights_copy, tiny_checkpoint,
                                                                                 tmp_path):
    import json

    tiny_checkpoint = _crafted(tiny_checkpoint, tmp_path, metrics={"val_accuracy": 0.5})
    res = _ship_cli(tiny_checkpoint, "--name", "mj", *SHIP_ARGS, "--metrics-json", '{"params": 5}')
    assert res.exit_code == 1 and "params 5 is not the model's" in " ".join(res.output.split()), res.output
    assert not (weights_copy / "mj.pt").exists()
    res = _ship_cli(tiny_checkpoint, "--name", "mj", *SHIP_ARGS, "--metrics-json",
                    '{"val_accuracy": 0.99, "val_accuracy_csv": 0.98}')
    assert res.exit_code == 0, res.output
    assert "note: --metrics-json replaces the checkpoint's val_accuracy" in res.stderr
    assert "val_accuracy_csv" not in res.stderr  # a new key is no replacement
    entry = next(e for e in json.loads((weights_copy / "weights.json").read_text()) if e["name"] == "mj")
    assert entry["metrics"]["val_accuracy"] == 0.99


@pytest.mark.parametrize("args, msg", [
    (["--parity-gate-reason", "stale"], "--parity-gate-reason without --parity-gate"),
    (["--recipe", " "], "--recipe is empty"),
    (["--parity-gate", '{"int8": {"min_agreement": 0.9}, "INT8": {"min_agreement": 0.95}}', "--parity-gate-reason",
      "x"], "precision 'int8' is given twice"),
])
def test_ship_refuses_half_given_options(weights_copy, tiny_checkpoint, args, msg):
    before = _snapshot(weights_copy)
    res = _ship_cli(tiny_checkpoint, "--name", "x", *SHIP_ARGS, *args)
    assert res.exit_code == 2 and msg in " ".join(res.output.split()), res.output
    assert _snapshot(weights_copy) == before


def test_a_gate_takes_precision_names_in_any_case(weights_copy, tiny_checkpoint):
    import json

    res = _ship_cli(tiny_checkpoint, "--name", "g", *SHIP_ARGS, "--parity-gate", '{"INT8": {"min_agreement": 0.97}}',
                    "--parity-gate-reason", "measured")
    assert res.exit_code == 0, res.output
    entry = next(e for e in json.loads((weights_copy / "weights.json").read_text()) if e["name"] == "g")
    assert entry["parity_gate"] == {"int8": {"min_agreement": 0.97}}


def test_ship_refuses_a_folder_in_the_way_and_a_failed_cleanup_is_no_failure(weights_copy, tiny_checkpoint,
                                                                             monkeypatch, caplog):
    (weights_copy / "dirw.pt").mkdir()
    res = _ship_cli(tiny_checkpoint, "--name", "dirw", "--replace", *SHIP_ARGS)
    assert res.exit_code == 1 and "is not a plain file" in " ".join(res.output.split()), res.output
    assert (weights_copy / "dirw.pt").is_dir() and not list(weights_copy.glob(".old-*"))
    # the weight is in and listed: a temp file that cannot be removed afterwards is a warning, not an error
    real_unlink = Path.unlink

    def stuck(self, missing_ok=False):
        if self.name.startswith(".old-"):
            raise OSError(16, "Device or resource busy")
        return real_unlink(self, missing_ok=missing_ok)

    from fer_edge.weights.ship import ship

    monkeypatch.setattr(Path, "unlink", stuck)
    import logging

    with caplog.at_level(logging.WARNING, logger="fer_edge.weights"):
        meta = ship(tiny_checkpoint, "small", recipe="r", hardware="h", train_time="t", replace_existing=True)
    assert meta.architecture == "fer_nano" and load_checkpoint(weights_copy / "small.pt").model_name == "fer_nano"
    assert "could not remove" in caplog.text and ".old-small-" in caplog.text


def test_ship_says_whether_an_interrupt_shipped_the_weight(weights_copy, tiny_checkpoint, monkeypatch):
    import fer_edge.weights.ship as ship_mod

    def stop(*a, **k):
        raise KeyboardInterrupt

    before = _snapshot(weights_copy)
    monkeypatch.setattr(ship_mod, "_commit", stop)
    res = _ship_cli(tiny_checkpoint, "--name", "tiny", *SHIP_ARGS)
    assert res.exit_code == 130 and "interrupted: 'tiny' was not shipped" in res.output, res.output
    assert _snapshot(weights_copy) == before


def test_gate_refuses_a_reason_with_an_empty_gate(weights_copy):
    """QA: `gate small --gate '{}' --reason x` dropped the reason silently (exit 0); ship refuses the same."""
    from typer.testing import CliRunner

    from fer_edge.weights.gate import cli as gate_cli

    before = _snapshot(weights_copy)
    res = CliRunner().invoke(gate_cli, ["nano", "--gate", "{}", "--reason", "x"])
    assert res.exit_code == 2 and "--reason without a gate" in " ".join(res.output.split()), res.output
    assert _snapshot(weights_copy) == before
    res = CliRunner().invoke(gate_cli, ["nano", "--gate", "{}"])  # the defaults back, with no reason
    assert res.exit_code == 0, res.output


class _NotHandled(Exception):
    """What a SIGTERM the command does not catch stands for here (it would end pytest)."""


def _sigterm_self(*a, **k):
    import os
    import signal

    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not stop the work")


@pytest.fixture
def sigterm_guard():
    import signal

    def unhandled(signum, frame):
        raise _NotHandled

    previous = signal.signal(signal.SIGTERM, unhandled)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_ship_and_gate_say_what_a_sigterm_left(weights_copy, tiny_checkpoint, monkeypatch, sigterm_guard):
    """QA: SIGTERM ended ship and gate with status 143 and nothing on stderr."""
    from typer.testing import CliRunner

    import fer_edge.weights.ship as ship_mod
    from fer_edge.weights.gate import cli as gate_cli

    before = _snapshot(weights_copy)
    monkeypatch.setattr(ship_mod, "_commit", _sigterm_self)
    res = _ship_cli(tiny_checkpoint, "--name", "tiny", *SHIP_ARGS)
    assert res.exit_code == 130, res.output
    assert res.stderr == "interrupted: 'tiny' was not shipped; the weights folder is as it was\n"
    monkeypatch.setattr(ship_mod, "_write_entry", _sigterm_self)
    res = CliRunner().invoke(gate_cli, ["nano", "--gate", '{"int8": {"min_agreement": 0.9}}', "--reason", "r"])
    assert res.exit_code == 130, res.output
    assert res.stderr == "interrupted: 'nano''s parity gate was not changed; weights.json is as it was\n"
    assert _snapshot(weights_copy) == before


def test_an_interrupt_between_the_renames_is_held_until_they_are_done(weights_copy, tiny_checkpoint, monkeypatch):
    """QA (from the code): a signal between moving small.pt aside and putting the new one in left small.pt
    missing, and the clean-up then removed the earlier file under .old-*: the renames now finish first."""
    import json
    import os
    import signal

    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if Path(src).name == "small.pt":  # the earlier file is aside: Ctrl-C now
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace)
    res = _ship_cli(tiny_checkpoint, "--name", "small", "--replace", *SHIP_ARGS)
    assert res.exit_code == 130 and res.stderr.endswith("interrupted: 'small' was shipped\n"), res.output
    entries = {e["name"]: e for e in json.loads((weights_copy / "weights.json").read_text())}
    assert entries["small"]["architecture"] == "fer_nano"
    assert load_checkpoint(weights_copy / "small.pt").model_name == "fer_nano"  # the file its entry names
    assert not [p.name for p in weights_copy.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("text, why", [
    ('[{"name": "nano",', "not valid JSON|Expecting"),
    ('{"a": 1}', "expected a list of weight entries"),
    ('[{"name": "x", "bogus": 1}]', "unknown fields bogus"),
    ('[{"name": "x", "architecture": "a", "file": "x.pt", "params": 1, "macs": 1, "mean": 0.5, "std": 0.2}, '
     '{"name": "x", "architecture": "a", "file": "x.pt", "params": 1, "macs": 1, "mean": 0.5, "std": 0.2}]',
     "'x' is listed twice"),
])
def test_a_damaged_weights_table_is_named_and_paths_still_work(weights_copy, tiny_checkpoint, monkeypatch, text,
                                                               why):
    """It crashed every command at import, with a JSONDecodeError/AttributeError/TypeError traceback."""
    import fer_edge.weights as weights

    (weights_copy / "weights.json").write_text(text)
    with pytest.raises(CheckpointError, match=rf"weights\.json, the shipped weights' table, is damaged \(.*({why})"):
        weights._load_table()
    pretrained, problem = weights._load_table_or_note()
    assert pretrained == {} and "is damaged" in problem
    monkeypatch.setattr(weights, "PRETRAINED", pretrained)
    monkeypatch.setattr(weights, "TABLE_PROBLEM", problem)
    assert weights.resolve_checkpoint(str(tiny_checkpoint)) == Path(tiny_checkpoint)  # a path needs no table
    with pytest.raises(CheckpointError, match="no shipped model can be named: .*is damaged"):
        weights.resolve_checkpoint("nano")
