"""QA round 5 on CPUs without VNNI: a reproducible OpenVINO INT8 gate and the gate's machine class in the manifest.
Each test fails without its fix."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fer_edge.targets import TARGETS
from test_export import SYNTHETIC_GATE_MIN, export_all


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_checkpoint, synthetic_csv):
    return export_all(tmp_path_factory, tiny_checkpoint, synthetic_csv)


@pytest.fixture(autouse=True)
def _gate_minimum_for_synthetic_data(monkeypatch):
    from fer_edge.exporters import calibration

    monkeypatch.setattr(calibration, "MIN_VAL_SIZE", SYNTHETIC_GATE_MIN)


class _Vset:
    def __init__(self, n=8, classes=7, seed=0):
        rng = np.random.default_rng(seed)
        self.inputs = rng.standard_normal((n, 1, 48, 48)).astype(np.float32)
        self.logits = rng.standard_normal((n, classes)).astype(np.float32)
        self.labels = self.logits.argmax(1)


def _fake_runtime(name: str, opened: list, logits: np.ndarray):
    """A runtime class named ``name`` that records how it was opened and answers ``logits``, batch after batch."""
    from fer_edge.runtimes.base import Runtime

    done = [0]

    class Fake(Runtime):
        OPTIONS = frozenset(("precision_hint",))

        @classmethod
        def available(cls):
            return True, ""

        def __init__(self, path, device=None, threads=None, batch_hint=1, **options):
            super().__init__(path, device, threads, batch_hint, **options)
            opened.append({"threads": threads, "batch_hint": batch_hint})

        def run(self, x):
            done[0] += len(x)
            return logits[done[0] - len(x): done[0]]

        def metadata(self):
            return {}

    Fake.name = name
    return Fake


# --- 1. the OpenVINO INT8 gate runs on one thread, and says how it ran ------------------------------------------------
@pytest.mark.parametrize("runtime,target,precision,threads", [
    ("openvino", "openvino", "int8", 1),
    ("openvino", "openvino", "fp32", None),
    ("onnxruntime", "onnx", "int8", None),
])
def test_the_gate_opens_openvino_int8_on_one_thread_and_records_threads_and_batch(monkeypatch, runtime, target,
                                                                                    precision, threads):
    """QA: the gate opened every runtime on all cores (threads=None) at batch 256; on an x86 CPU without VNNI
    OpenVINO gave nano's INT8 IR other answers from run to run (96.18-96.32% agreement), so pass or fail moved.
    OpenVINO INT8 now runs on one thread (bit-identical there); the entry records threads and batch."""
    import fer_edge.runtimes as runtimes
    from fer_edge.exporters import validate

    vset = _Vset()
    opened: list = []
    cls = _fake_runtime(runtime, opened, vset.logits)
    monkeypatch.setattr(runtimes, "get_runtime", lambda name: cls)
    out = validate.validate_artifact(Path("x"), TARGETS[target], precision, vset, vset.logits)
    assert out["status"] == "passed", out
    assert opened == [{"threads": threads, "batch_hint": validate.VAL_BATCH}]
    assert out["threads"] == threads and out["batch"] == validate.VAL_BATCH == 256
    assert validate.validation_threads(runtime, precision) == threads


# --- 3. the manifest says which machine class the gate's pass or fail belongs to --------------------------------------
def test_a_validation_entry_records_the_cpu_it_ran_on(monkeypatch):
    """QA: a manifest's INT8 pass or fail depends on the CPU the gate ran on (VNNI or not), which it did not say."""
    import fer_edge.runtimes as runtimes
    from fer_edge.benchmarks import environment
    from fer_edge.cpu import int8_can_saturate_here
    from fer_edge.exporters import validate

    vset = _Vset()
    cls = _fake_runtime("openvino", [], vset.logits)
    monkeypatch.setattr(runtimes, "get_runtime", lambda name: cls)
    out = validate.validate_artifact(Path("x"), TARGETS["openvino"], "int8", vset, vset.logits)
    cpu = out["cpu"]
    assert cpu == environment.cpu_record()
    assert set(cpu) == {"model", "arch", "isa", "flags", "vnni", "int8_can_saturate"}
    assert cpu["int8_can_saturate"] is int8_can_saturate_here()
    assert cpu["isa"] == environment.simd_isa() and cpu["model"] == environment.cpu_model()
    assert cpu["vnni"] is bool(set(cpu["flags"]) & {"avx512_vnni", "avx_vnni", "avx512vnni"})
    json.dumps(out)  # goes into manifest.json as it is


def test_the_cpu_record_reads_vnni_from_the_flags(monkeypatch):
    from fer_edge.benchmarks import environment

    monkeypatch.setattr(environment, "cpu_flags", lambda: {"avx2", "fma", "avx512f", "avx512_vnni", "sse2"})
    monkeypatch.setattr(environment.platform, "machine", lambda: "x86_64")
    rec = environment.cpu_record()
    assert rec["vnni"] is True and rec["isa"] == "avx512" and rec["flags"] == ["avx2", "avx512_vnni", "avx512f", "fma"]
    monkeypatch.setattr(environment, "cpu_flags", lambda: {"avx2", "fma", "sse2"})
    assert environment.cpu_record()["vnni"] is False


def test_an_exported_manifest_records_threads_batch_and_cpu(exported):
    """The real export path: every validated entry of the manifest names its threads, batch and CPU."""
    from fer_edge.benchmarks.environment import cpu_record

    manifest = json.loads((exported.out_dir / "manifest.json").read_text())
    checked = 0
    for art in manifest["artifacts"]:
        v = art["validation"]
        if v["status"] == "not validated":
            continue
        checked += 1
        want = 1 if (art["runtime"], art["precision"]) == ("openvino", "int8") else None
        assert v["threads"] == want and v["batch"] == 256, (art["file"], v)
        assert v["cpu"] == cpu_record(), v["cpu"]
    assert checked >= 4
    assert any(a["runtime"] == "openvino" and a["precision"] == "int8" and a["validation"]["threads"] == 1
               for a in manifest["artifacts"])
