"""Runtimes: the registry, availability, devices, options, and running/reading real exported artifacts.

Artifacts come from the session export of test_export.py (exported once, shared).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fer_edge.constants import LABELS
from fer_edge.errors import ArtifactError, FerEdgeError, RuntimeUnavailableError, UnknownDeviceError
from fer_edge.targets import TARGETS
from test_export import export_all  # the shared once-per-session export

EXPECTED = {"pytorch", "torchscript", "onnxruntime", "openvino", "coreml"}


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_checkpoint, synthetic_csv):
    return export_all(tmp_path_factory, tiny_checkpoint, synthetic_csv)


def _fp32(exported, target: str):
    return exported.out_dir / TARGETS[target].filename("fer_nano", "fp32")


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).normal(size=(5, 1, 48, 48)).astype(np.float32)


# --- registry -------------------------------------------------------------------------------
def test_registry_covers_every_target():
    from fer_edge.runtimes import RUNTIMES, Runtime

    assert set(RUNTIMES) == EXPECTED
    for name, cls in RUNTIMES.items():
        assert issubclass(cls, Runtime) and cls.name == name and cls.package
    for t in TARGETS.values():
        assert t.runtime in RUNTIMES


@pytest.mark.parametrize("target", list(TARGETS))
def test_runtime_for_path_uses_the_targets_table(target, tmp_path):
    from fer_edge.runtimes import runtime_for_path

    t = TARGETS[target]
    assert runtime_for_path(tmp_path / t.filename("m", t.precisions[0])).name == t.runtime


def test_runtime_for_path_checkpoints_and_unknown(tmp_path):
    from fer_edge.runtimes import get_runtime, runtime_for_path

    assert runtime_for_path(tmp_path / "best.pt").name == runtime_for_path(tmp_path / "w.pth").name == "pytorch"
    with pytest.raises(FerEdgeError, match="suffixes"):
        runtime_for_path(tmp_path / "model.tflite")
    with pytest.raises(FerEdgeError, match="valid runtimes: pytorch, torchscript, onnxruntime, openvino, coreml"):
        get_runtime("tensorrt")


def test_availability_and_devices():
    from fer_edge.runtimes import RUNTIMES, available_runtimes

    avail = available_runtimes()
    assert set(avail) == EXPECTED
    if sys.platform != "darwin":
        assert avail["coreml"] == (False, "needs macOS")
        assert RUNTIMES["coreml"].devices() == []
    for name in ("pytorch", "torchscript", "onnxruntime", "openvino"):
        assert avail[name] == (True, "")
        assert RUNTIMES[name].devices()
    assert "cpu" in RUNTIMES["pytorch"].devices()
    ort_devices = RUNTIMES["onnxruntime"].devices()
    assert "CPUExecutionProvider" in ort_devices and "AzureExecutionProvider" not in ort_devices
    assert "CPU" in RUNTIMES["openvino"].devices()


def test_missing_package_is_named(monkeypatch):
    import importlib.util

    from fer_edge.runtimes import RUNTIMES

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    ok, why = RUNTIMES["openvino"].available()
    assert not ok and "openvino" in why


# --- running artifacts ----------------------------------------------------------------------
RUNNABLE = [t for t in TARGETS if TARGETS[t].runs_here()]


@pytest.mark.parametrize("target", RUNNABLE)
def test_runtime_runs_its_artifact(exported, tiny_checkpoint, batch, target):
    from fer_edge.runtimes import load_runtime

    ref = load_runtime(tiny_checkpoint).run(batch)
    rt = load_runtime(_fp32(exported, target), threads=1)
    out = rt.run(batch)
    assert out.shape == (5, len(LABELS)) and out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-3
    one = rt.run(batch[0])  # a single 1 x 48 x 48 image gets a batch axis
    assert one.shape == (1, len(LABELS))
    info = rt.describe()
    assert info["runtime"] == rt.name and info["versions"]
    with pytest.raises(FerEdgeError, match="48"):
        rt.run(np.zeros((2, 3, 48, 48), np.float32))


@pytest.mark.parametrize("target", list(TARGETS))
def test_missing_artifact(exported, tmp_path, target):
    from fer_edge.runtimes import runtime_for_path

    cls = runtime_for_path(_fp32(exported, target))
    with pytest.raises(ArtifactError, match="artifact not found"):  # before any check of the runtime itself
        cls(tmp_path / TARGETS[target].filename("nothing", "fp32"))


@pytest.mark.parametrize("target", ["checkpoint", *RUNNABLE])
def test_one_runtime_answers_several_threads_at_once(exported, tiny_checkpoint, target):
    """QA: an app sharing one OpenVINO runtime between threads got "Infer Request is busy" and, worse, another
    thread's answers (one request's output overwritten before it was copied). Every runtime gives each call its
    own answer."""
    import threading

    from fer_edge.runtimes import load_runtime

    rt = load_runtime(tiny_checkpoint if target == "checkpoint" else _fp32(exported, target))
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(1 + i % 3, 1, 48, 48)).astype(np.float32) for i in range(6)]
    want = [rt.run(x) for x in xs]
    problems: list[str] = []

    def work(offset):
        for k in range(40):
            j = (offset + k) % len(xs)
            try:
                if not np.allclose(rt.run(xs[j]), want[j], atol=1e-5):
                    problems.append(f"wrong answer for input {j}")
            except Exception as e:  # noqa: BLE001 - collected, asserted below
                problems.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not problems, problems[:3]


def test_pytorch_runtime(tiny_checkpoint, batch):
    import torch

    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.runtimes import get_runtime
    from fer_edge.utils import sha256_path

    rt = get_runtime("pytorch")(tiny_checkpoint, threads=1)
    model = load_checkpoint(tiny_checkpoint).build_model()
    with torch.no_grad():
        np.testing.assert_allclose(rt.run(batch), model(torch.from_numpy(batch)).numpy(), atol=1e-6)
    md = rt.metadata()
    assert json.loads(md["labels"]) == list(LABELS) and md["model"] == "fer_nano"
    assert md["source_sha256"] == sha256_path(tiny_checkpoint)
    assert rt.describe()["device"] == "cpu"
    with pytest.raises(RuntimeUnavailableError, match="available"):
        get_runtime("pytorch")(tiny_checkpoint, device="npu")


def test_onnxruntime_devices_and_options(exported, batch):
    from fer_edge.runtimes import get_runtime

    cls = get_runtime("onnxruntime")
    path = _fp32(exported, "onnx")
    rt = cls(path, device="cpu", threads=1)
    assert rt.device == "CPUExecutionProvider"
    assert rt.describe()["providers"] == ["CPUExecutionProvider"]
    assert rt.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(RuntimeUnavailableError, match="CPUExecutionProvider"):
        cls(path, device="tensorrt")
    with pytest.raises(ArtifactError, match="graph_optimization_level"):
        cls(path, graph_optimization_level="max")
    np.testing.assert_allclose(cls(path, graph_optimization_level="disable").run(batch), rt.run(batch), atol=1e-5)


def _saturating_matmul(path):
    """A one-node ``MatMulInteger`` (u8 x s8) whose products 255 x 127 overflow int16 when summed in pairs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w"], ["y"])], "saturation",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 8])],
        [numpy_helper.from_array(np.full((64, 8), 127, np.int8), "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path, np.full((1, 64), 255, np.uint8), 255 * 127 * 64


def _x86_without_vnni() -> bool:
    from fer_edge.cpu import int8_can_saturate_here

    return int8_can_saturate_here()


def test_onnxruntime_int8_is_exact_by_default_on_this_cpu(tmp_path):
    """``exact_int8="auto"``: the exact product here, with the slow exact kernels only where the fast ones saturate."""
    from fer_edge.runtimes import get_runtime
    from fer_edge.runtimes.onnxruntime import X64_QUANT_PRECISION

    cls = get_runtime("onnxruntime")
    path, x, exact = _saturating_matmul(tmp_path / "sat.onnx")
    rt = cls(path)
    wanted = "1" if _x86_without_vnni() else "0"
    assert rt.describe()["session_config"] == {X64_QUANT_PRECISION: wanted} and rt.describe()["exact_int8"] == "auto"
    assert rt.session.get_session_options().get_session_config_entry(X64_QUANT_PRECISION) == wanted
    np.testing.assert_array_equal(rt.session.run(None, {"x": x})[0], exact)
    assert cls.settings_now() == {"session_config": {X64_QUANT_PRECISION: wanted}}
    for forced, entry in ((True, "1"), (False, "0")):
        s = cls(path, exact_int8=forced)
        assert s.session.get_session_options().get_session_config_entry(X64_QUANT_PRECISION) == entry
    np.testing.assert_array_equal(cls(path, exact_int8=True).session.run(None, {"x": x})[0], exact)
    with pytest.raises(ArtifactError, match="exact_int8"):
        cls(path, exact_int8="yes")


@pytest.mark.parametrize("saturates", [True, False], ids=["no-vnni", "vnni"])
def test_onnxruntime_auto_follows_the_cpu(monkeypatch, saturates):
    from fer_edge import cpu
    from fer_edge.runtimes.onnxruntime import X64_QUANT_PRECISION, session_config

    monkeypatch.setattr(cpu, "int8_can_saturate_here", lambda: saturates)
    assert session_config() == {X64_QUANT_PRECISION: "1" if saturates else "0"}
    assert session_config(True) == {X64_QUANT_PRECISION: "1"} and session_config(False) == {X64_QUANT_PRECISION: "0"}


@pytest.mark.parametrize("machine, flags, saturates", [
    ("x86_64", {"avx2", "fma"}, True),                        # AVX2 without VNNI
    ("x86_64", {"avx512f", "avx512bw"}, True),                # AVX-512 before VNNI (Skylake-SP)
    ("x86_64", {"avx512f", "avx512_vnni"}, False),            # Cascade Lake on, Zen 4 on
    ("AMD64", {"avx2", "avx_vnni"}, False),                   # AVX-VNNI (Alder Lake)
    ("x86_64", set(), True),                                  # flags unknown: the safe side
    ("aarch64", {"asimd"}, False),                            # ARM: no U8S8 saturation path
    ("arm64", set(), False),
])
def test_int8_can_saturate_here(monkeypatch, machine, flags, saturates):
    from fer_edge import cpu

    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: set(flags))
    assert cpu.int8_can_saturate_here() is saturates


@pytest.mark.skipif(not _x86_without_vnni(), reason="U8S8 saturation happens only on x86-64 CPUs without VNNI")
def test_onnxruntime_fast_int8_saturates_on_x86_without_vnni(tmp_path):
    """Why ``exact_int8`` is the default: without it this CPU gives a wrong product."""
    from fer_edge.runtimes import get_runtime

    path, x, exact = _saturating_matmul(tmp_path / "sat.onnx")
    out = get_runtime("onnxruntime")(path, exact_int8=False).session.run(None, {"x": x})[0]
    assert (out < exact).all()


@pytest.mark.parametrize("target", ["checkpoint", "torchscript"])
def test_torch_runtimes_use_their_threads_and_leave_the_callers_setting(exported, tiny_checkpoint, batch, target,
                                                                        monkeypatch):
    """torch's thread count is the process's: a runtime built with threads=1 set it for good, so a runtime built
    before it with 2 ran (and reported) the wrong count, and the caller's own setting was lost."""
    import torch

    from fer_edge.runtimes import load_runtime

    path = tiny_checkpoint if target == "checkpoint" else _fp32(exported, "torchscript")
    torch.set_num_threads(2)
    try:
        two = load_runtime(path, threads=2)
        one = load_runtime(path, threads=1)
        assert torch.get_num_threads() == 2  # building one changed nothing
        seen = []
        real = torch.inference_mode

        def spy(*a, **k):  # the count in effect while the model runs
            seen.append(torch.get_num_threads())
            return real(*a, **k)

        monkeypatch.setattr(torch, "inference_mode", spy)
        one.run(batch)
        two.run(batch)
        assert seen == [1, 2] and torch.get_num_threads() == 2
        assert (one.describe()["threads"], two.describe()["threads"]) == (1, 2)
    finally:
        torch.set_num_threads(2)


def test_openvino_hints(exported, batch):
    from fer_edge.runtimes import get_runtime

    cls = get_runtime("openvino")
    path = exported.out_dir / TARGETS["openvino"].filename("fer_nano", "int8")
    rt = cls(path, threads=1)
    info = rt.describe()
    assert info["precision_hint"] == "f32"  # pinned on CPU
    assert rt.config["INFERENCE_PRECISION_HINT"] == "f32" and rt.config["INFERENCE_NUM_THREADS"] == 1
    assert str(info["performance_hint"]).upper().endswith("LATENCY")
    assert "THROUGHPUT" in str(cls(path, batch_hint=8).describe()["performance_hint"]).upper()
    # one synchronous request per call: one stream, so --threads N all work on it (THROUGHPUT made 2 streams of
    # 1 thread each of --threads 2); the record reads back what the compiled model uses
    wide = cls(path, threads=2, batch_hint=8)
    assert wide.compiled.get_property("NUM_STREAMS") == 1
    info = wide.describe()
    assert info["num_streams"] == "1"
    assert info["inference_num_threads"] == str(wide.compiled.get_property("INFERENCE_NUM_THREADS"))
    plugin_choice = cls(path, precision_hint="default")
    assert "INFERENCE_PRECISION_HINT" not in plugin_choice.config
    assert rt.run(batch).shape == (5, len(LABELS))
    with pytest.raises(RuntimeUnavailableError, match="CPU"):
        cls(path, device="NPU.7")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the signal-stack crash was seen on Linux")
def test_ctrl_c_still_works_after_openvino_models_are_freed_in_any_order(exported):
    """OpenVINO CPU plugins freed out of order used to leave the thread on a freed signal stack:
    the next Ctrl-C crashed pytest itself with a segmentation fault. ``exported`` ran NNCF too."""
    import gc
    import os
    import signal
    import time

    from fer_edge.runtimes import get_runtime

    cls = get_runtime("openvino")
    path = exported.out_dir / TARGETS["openvino"].filename("fer_nano", "int8")
    first, second = cls(path, threads=1), cls(path, batch_hint=8)
    first.run(np.zeros((1, 1, 48, 48), np.float32))
    del first
    gc.collect()
    del second
    gc.collect()
    # a shell starts background jobs with SIGINT ignored, and Python then installs no handler:
    # install it, so that the test does not depend on how pytest was started
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)  # the handler runs here
    finally:
        signal.signal(signal.SIGINT, previous)


def test_keep_sigaltstack_restores_the_threads_stack():
    import ctypes

    from fer_edge.runtimes._common import keep_sigaltstack

    if not sys.platform.startswith("linux"):
        pytest.skip("Linux stack_t layout")

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    libc = ctypes.CDLL(None)

    def current():
        st = StackT()
        assert libc.sigaltstack(None, ctypes.byref(st)) == 0
        return st.ss_sp, st.ss_flags, st.ss_size

    before = current()
    buf = ctypes.create_string_buffer(1 << 16)
    with keep_sigaltstack():
        assert libc.sigaltstack(ctypes.byref(StackT(ctypes.addressof(buf), 0, 1 << 16)), None) == 0
        assert current()[0] == ctypes.addressof(buf)
    assert current() == before


def test_openvino_needs_its_bin(exported, tmp_path):
    import shutil

    from fer_edge.runtimes import get_runtime

    xml = tmp_path / "m_fp32.xml"
    shutil.copy(_fp32(exported, "openvino"), xml)
    with pytest.raises(ArtifactError, match=r"m_fp32\.bin"):
        get_runtime("openvino")(xml)


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the behaviour off macOS")
def test_coreml_off_macos_reads_metadata_but_does_not_run(exported, batch):
    from fer_edge.runtimes import get_runtime, load_runtime

    path = _fp32(exported, "coreml")
    rt = get_runtime("coreml")(path)
    md = rt.metadata()
    assert json.loads(md["labels"]) == list(LABELS) and md["target"] == "coreml"
    assert rt.logits_path.name == "fer_nano_fp32_logits.mlpackage"
    with pytest.raises(RuntimeUnavailableError, match="macOS"):
        rt.run(batch)
    with pytest.raises(RuntimeUnavailableError, match="needs macOS"):
        load_runtime(path)


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction needs macOS")
@pytest.mark.parametrize("units", ["CPU_ONLY", "ALL"])
def test_coreml_compute_units(exported, tiny_checkpoint, batch, units):
    from fer_edge.runtimes import load_runtime

    ref = load_runtime(tiny_checkpoint).run(batch)
    out = load_runtime(_fp32(exported, "coreml"), device=units).run(batch)
    assert np.abs(out - ref).max() < 1e-3


def test_torchscript_reads_extra_file(exported):
    from fer_edge.runtimes import get_runtime

    rt = get_runtime("torchscript")(_fp32(exported, "torchscript"))
    assert rt.metadata()["target"] == "torchscript" and rt.describe()["precision"] == "fp32"


def test_unknown_options_and_bad_threads_are_refused(exported):
    from fer_edge.runtimes import load_runtime

    onnx_file = _fp32(exported, "onnx")
    with pytest.raises(FerEdgeError, match="runtime onnxruntime has no option exact_int; its options: exact_int8"):
        load_runtime(onnx_file, exact_int=True)
    with pytest.raises(FerEdgeError, match="runtime pytorch has no option precision_hint"):
        load_runtime("nano", precision_hint="f32")
    for threads in (-3, "2", 1.5):
        with pytest.raises(FerEdgeError, match="threads must be a whole number"):
            load_runtime(onnx_file, threads=threads)
    with pytest.raises(FerEdgeError, match=r"\.ts, or a checkpoint \(\.pt, \.pth\)"):
        load_runtime(onnx_file.with_suffix(".csv"))
    with pytest.raises(FerEdgeError, match=r"got shape \(2, 48, 48\)"):
        load_runtime(onnx_file).run(np.zeros((2, 48, 48), np.float32))


@pytest.mark.parametrize("target", ["pytorch", "torchscript", "onnx", "openvino", "coreml"])
def test_input_that_is_no_array_of_numbers_is_a_data_error_in_every_runtime(exported, tiny_checkpoint, target):
    """Runtime.run("abc") raised numpy's plain ValueError (it converted before checking the shape)."""
    from fer_edge.errors import DataError
    from fer_edge.runtimes import load_runtime

    if target == "coreml" and sys.platform != "darwin":
        pytest.skip("Core ML runs only on macOS")
    rt = load_runtime(tiny_checkpoint if target == "pytorch" else _fp32(exported, target))
    for bad, words in (("abc", "got str 'abc', which is no array of numbers"),
                       ([[1.0, 2.0], [3.0]], "got list .*, which is no array of numbers"),
                       (np.zeros((2, 48, 48), np.float32), r"got shape \(2, 48, 48\)")):
        with pytest.raises(DataError, match=r"expected float32 N x 1 x 48 x 48 input .*" + words):
            rt.run(bad)


@pytest.mark.parametrize("target", ["onnx", "openvino", "torchscript"])
def test_an_empty_batch_gives_no_rows_in_every_runtime(exported, target):
    from fer_edge.runtimes import load_runtime

    out = load_runtime(_fp32(exported, target)).run(np.zeros((0, 1, 48, 48), np.float32))
    assert out.shape == (0, 7)


def test_the_cli_turns_onnxruntime_telemetry_off_unless_the_user_set_it(tmp_path):
    """Importing onnxruntime wrote a device id and an event database under ~/.cache/Microsoft for upload."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "CI", "TF_BUILD",
                                                            "GITHUB_ACTIONS")}
    env["HOME"] = str(tmp_path)
    code = ("import os, sys; from fer_edge.cli import main\n"
            "try:\n    main(['devices', '--json'])\nexcept SystemExit:\n    pass\n"
            "import onnxruntime\nprint(os.environ.get('ORT_DISABLE_TELEMETRY'))")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "1"
    assert not list(tmp_path.rglob("*Microsoft*")), list(tmp_path.rglob("*"))
    env["ORT_DISABLE_TELEMETRY"] = "0"  # the user's own setting wins
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "0", r.stderr


def test_the_cli_turns_openvino_telemetry_off_unless_the_user_opted_in(tmp_path):
    """QA: OpenVINO's converter and NNCF started a process posting usage events to Google Analytics on every
    export (and a Ctrl-C printed its traceback); with no environment switch, the commands make them use their
    built-in stubs, unless the user's consent file (opt_in_out --opt_in) says 1."""
    import os
    import subprocess
    import sys

    pytest.importorskip("openvino")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL", "GITHUB_ACTIONS")}
    env["HOME"] = str(tmp_path)
    code = ("import sys; from fer_edge.cli import main\n"
            "try:\n    main(['devices', '--json'])\nexcept SystemExit:\n    pass\n"
            "import openvino.tools.ovc.convert_impl as ci\nprint('TM', ci.tm.__name__)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "TM openvino.tools.ovc.telemetry_stub", r.stdout[-500:]
    assert not (tmp_path / "intel").exists()
    (tmp_path / "intel").mkdir()
    (tmp_path / "intel" / "openvino_telemetry").write_text("1")  # the user opted in: their choice stands
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "TM openvino_telemetry", r.stderr[-2000:]


def test_every_python_m_script_turns_onnxruntime_telemetry_off_as_the_cli_does(tmp_path):
    """QA: the python -m fer_edge... tools (ort_int8, export_bench, distill_round's ONNX Runtime teachers, ...) left
    ONNX Runtime's telemetry on, where the fer-edge command turns it off. Every module with a __main__ block that
    runs (found by scanning the package, so a new script is covered) sets it before parsing its arguments."""
    import os
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1] / "fer_edge"
    scripts = sorted(
        ".".join(("fer_edge", *f.relative_to(root).with_suffix("").parts))
        for f in root.rglob("*.py")
        if re.search(r'^if __name__ == "__main__":\n(?!.*not_a_script)', f.read_text(), flags=re.M)
        and f.name != "__main__.py")
    assert "fer_edge.benchmarks.ort_int8" in scripts and "fer_edge.training.distill_round" in scripts, scripts
    code = ("import os, runpy, sys, warnings\nwarnings.simplefilter('ignore')\n"
            f"for m in {scripts!r}:\n"
            "    os.environ.pop('ORT_DISABLE_TELEMETRY', None)\n"
            "    sys.argv = [m, '--help']\n"
            "    try:\n        runpy.run_module(m, run_name='__main__', alter_sys=True)\n"
            "    except SystemExit:\n        pass\n"
            "    print('ENV', m, os.environ.get('ORT_DISABLE_TELEMETRY'), flush=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["HOME"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = dict(line.split()[1:] for line in r.stdout.splitlines() if line.startswith("ENV "))
    assert seen == {m: "1" for m in scripts}, seen


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_device_a_runtime_has_here_is_one_it_knows(name):
    """bench --devices refuses a name no runtime knows (a typo): a device present here must never be one."""
    from fer_edge.benchmarks.bench import check_devices
    from fer_edge.runtimes import RUNTIMES

    cls = RUNTIMES[name]
    ok, _ = cls.available()
    here = cls.devices() if ok else []
    assert set(here) <= set(cls.known_devices())
    check_devices([*here, "cpu"], [name])


@pytest.mark.parametrize("target", ["pytorch", "torchscript", "onnx", "openvino"])
def test_cpu_is_one_device_name_for_every_runtime_in_any_case(exported, tiny_checkpoint, batch, target):
    """QA: device="cpu" failed for an OpenVINO .xml ("device 'cpu' is not available here; available: CPU") and
    device="CPU" for a TorchScript file, so code choosing a model by file type could not pass one device."""
    import fer_edge
    from fer_edge.runtimes import load_runtime

    path = tiny_checkpoint if target == "pytorch" else _fp32(exported, target)
    want = load_runtime(path).run(batch)
    for name in ("cpu", "CPU", "Cpu"):
        rt = load_runtime(path, device=name)
        assert rt.device.lower() in ("cpu", "cpuexecutionprovider") and np.allclose(rt.run(batch), want, atol=1e-5)
    assert fer_edge.load(path, device="cpu") is not None
    if target != "onnx":  # (ONNX Runtime names its providers: its own message)
        with pytest.raises(RuntimeUnavailableError, match=r"unknown device 'cpus' \(its devices: "):
            load_runtime(path, device="cpus")
    # a name the runtime takes on no machine is wrong on its own (a usage error in the CLI, exit 2); a known one
    # absent here (cuda without a GPU, ONNX Runtime's TensorRT) is only unavailable
    with pytest.raises(UnknownDeviceError, match="unknown"):
        load_runtime(path, device="cpus")
    absent = {"pytorch": ["cuda", "cuda:1"], "torchscript": ["cuda", "cuda:1"], "openvino": ["NPU", "GPU.1", "npu.0"],
              "onnx": ["TensorrtExecutionProvider", "tensorrt", "TENSORRT", "cuda:0"]}[target]
    for name in absent:  # (regression QA: cuda:1 was called unknown, where bench --devices counts it as cuda)
        try:
            load_runtime(path, device=name)
        except UnknownDeviceError:
            raise AssertionError(f"{name} is a device {target} knows: not a typo")
        except RuntimeUnavailableError as e:
            assert "not available here" in str(e), e
    if target == "onnx":  # a full provider name in another case is the provider, as its short name is
        assert load_runtime(path, device="cpuexecutionprovider").device == "CPUExecutionProvider"
    # an empty name is the default device in every runtime (ONNX Runtime called it unknown)
    assert load_runtime(path, device="").device.lower() in ("cpu", "cpuexecutionprovider")
    # torch's name:N of a device here is taken (cpu:0; cuda:1 on a GPU); the others name no ':N' index: a usage error
    if target in ("pytorch", "torchscript"):
        rt = load_runtime(path, device="cpu:0")
        assert rt.device == "cpu:0" and np.allclose(rt.run(batch), want, atol=1e-5)
    else:
        with pytest.raises(UnknownDeviceError, match="no ':N' index|without an index"):
            load_runtime(path, device="cpu:0")


def test_a_shipped_name_loads_the_shipped_weight_even_beside_a_file_of_that_name(tmp_path, monkeypatch):
    """QA: load_runtime("nano") read a file called nano in the current folder, where fer_edge.load("nano") and
    `fer-edge export nano` take the shipped model; ./nano names the file."""
    from fer_edge.runtimes import load_runtime
    from fer_edge.weights import PRETRAINED

    monkeypatch.chdir(tmp_path)
    (tmp_path / "nano").write_text("hi")
    rt = load_runtime("nano")
    assert rt.name == "pytorch" and rt.path.resolve() == PRETRAINED["nano"].path.resolve()
    with pytest.raises(FerEdgeError, match="cannot tell the target of"):
        load_runtime("./nano")


def test_onnxruntime_names_no_device_index(monkeypatch):
    """Regression QA: cuda:0 with the CUDA provider here was 'not available here; available: ..., CUDA': ONNX Runtime
    names devices by provider, so the index form is refused naming the one to use."""
    from fer_edge.runtimes.onnxruntime import OnnxRuntime

    monkeypatch.setattr(OnnxRuntime, "devices",
                        classmethod(lambda cls: ["CUDAExecutionProvider", "CPUExecutionProvider"]))
    assert OnnxRuntime.resolve_device("CUDA") == "CUDAExecutionProvider"
    with pytest.raises(UnknownDeviceError, match=r"without an index: use 'cuda' \(CUDAExecutionProvider"):
        OnnxRuntime.resolve_device("cuda:0")
