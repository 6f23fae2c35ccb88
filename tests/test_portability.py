"""What a portability pass (Windows and macOS simulated on Linux) found: the CPU's flags where there is no
/proc/cpuinfo, a coremltools without its compiled parts, DataLoader workers started by spawn, and ``--name``
values Windows cannot take."""
from __future__ import annotations

import pathlib
import pickle
import sys

import pytest
from typer.testing import CliRunner

from fer_edge.errors import ExportError, FerEdgeError


def _cli(*args):
    from fer_edge.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def _text(res) -> str:
    return " ".join(res.output.split())


# --- 1. VNNI where /proc/cpuinfo cannot be read (Windows, Intel macOS) ------------------------------------------
@pytest.fixture
def no_proc_cpuinfo(monkeypatch):
    """An x86 machine without /proc/cpuinfo; PyTorch's answers are the test's (``torch.cpu`` patched)."""
    import torch

    from fer_edge import cpu

    real = pathlib.Path.read_text

    def read_text(self, *args, **kwargs):
        if str(self) == "/proc/cpuinfo":
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    monkeypatch.setattr(cpu.platform, "machine", lambda: "AMD64")
    cpu.torch_cpu_flags.cache_clear()
    yield torch.cpu
    cpu.torch_cpu_flags.cache_clear()


def _exact_int8_here() -> str:
    from fer_edge.runtimes.onnxruntime import X64_QUANT_PRECISION, session_config

    return session_config("auto")[X64_QUANT_PRECISION]


@pytest.mark.parametrize("caps, saturates, isa", [
    ({"avx512_f": True, "avx2": True, "fma3": True, "avx512_vnni": True}, False, "avx512"),  # Cascade Lake on
    ({"avx512_f": True, "avx2": True, "fma3": True, "avx512_vnni": False}, True, "avx512"),  # Skylake-SP
    ({"avx2": True, "fma3": True, "avx_vnni": True}, False, "avx2+fma"),                    # AVX-VNNI (Alder Lake)
    ({"avx2": True, "fma3": True}, True, "avx2+fma"),                                       # Zen 3
])
def test_vnni_comes_from_torch_without_proc_cpuinfo(no_proc_cpuinfo, monkeypatch, caps, saturates, isa):
    """Every x86 CPU counted as lacking VNNI there: ONNX Runtime INT8 got the exact kernels (about 2x slower), and
    the bench report's ISA was "unknown"."""
    from fer_edge import cpu
    from fer_edge.benchmarks.environment import simd_isa

    assert cpu.proc_cpuinfo() == {}
    # torch's mapping also holds counts and names, which are not flags
    monkeypatch.setattr(no_proc_cpuinfo, "get_capabilities",
                        lambda: {**caps, "architecture": "x86_64", "cpu_name": "x", "l1d_cache_size": 32768},
                        raising=False)
    assert cpu.int8_can_saturate_here() is saturates
    assert _exact_int8_here() == ("1" if saturates else "0")
    assert simd_isa() == isa
    assert "architecture" not in cpu.cpu_flags() and "l1d_cache_size" not in cpu.cpu_flags()


@pytest.mark.parametrize("vnni", [True, False])
def test_vnni_from_an_older_torch_without_get_capabilities(no_proc_cpuinfo, monkeypatch, vnni):
    """torch before 2.9 has no ``get_capabilities``: its private ``_is_vnni_supported`` and ATen's kernel level."""
    import torch

    from fer_edge import cpu
    from fer_edge.benchmarks.environment import simd_isa

    monkeypatch.delattr(no_proc_cpuinfo, "get_capabilities", raising=False)
    monkeypatch.delattr(no_proc_cpuinfo, "_is_avx512_supported", raising=False)
    monkeypatch.delattr(no_proc_cpuinfo, "_is_avx2_supported", raising=False)
    monkeypatch.setattr(no_proc_cpuinfo, "_is_vnni_supported", lambda: vnni, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert cpu.int8_can_saturate_here() is not vnni
    assert simd_isa() == "avx2+fma"


def test_an_x86_cpu_nothing_can_read_keeps_the_safe_side(no_proc_cpuinfo, monkeypatch):
    """Where neither /proc/cpuinfo nor torch tells, the documented fallback stays: exact INT8 (no VNNI assumed)."""
    import torch

    from fer_edge import cpu
    from fer_edge.benchmarks.environment import simd_isa

    def broken():
        raise RuntimeError("cpuinfo failed to initialize")

    for helper in ("get_capabilities", "_is_vnni_supported", "_is_avx512_supported", "_is_avx2_supported"):
        monkeypatch.setattr(no_proc_cpuinfo, helper, broken, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", broken)
    assert cpu.cpu_flags() == set()
    assert cpu.int8_can_saturate_here() is True
    assert _exact_int8_here() == "1"
    assert simd_isa() == "unknown"


# --- 2. Core ML export with a coremltools lacking its compiled parts (Windows' sdist) ------------------------------
COREMLTOOLS_EXTENSIONS = ("coremltools.libmilstoragepython", "coremltools.libmodelpackage",
                          "coremltools.libcoremlpython", "coremltools._core")


def test_coreml_export_without_coremltools_compiled_parts_says_why(tiny_checkpoint, tmp_path, monkeypatch):
    """coremltools swallows their absence, and each Core ML export failed after converting with "RuntimeError:
    BlobWriter not loaded". Now that is refused before any work, per target as every export failure is: the
    other targets are still exported."""
    pytest.importorskip("coremltools")
    import coremltools.converters.mil.backend.mil.load as mil_load

    from fer_edge.exporters import coreml, export

    for name in COREMLTOOLS_EXTENSIONS:  # what an install from the sdist lacks
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(mil_load, "BlobWriter", None)  # what coremltools' import left there (it is imported already)
    out = tmp_path / "out"
    result = export(tiny_checkpoint, ["torchscript", "coreml"], ["fp32"], out, validate=False, raise_on_failure=False)
    assert [(f["target"], f["precision"]) for f in result.failed] == [("coreml", "fp32")]
    reason = result.failed[0]["reason"]
    assert reason.startswith("Core ML export needs coremltools' compiled parts (libmilstoragepython, libmodelpackage), "
                             "which are missing here"), reason
    assert "BlobWriter" not in reason
    assert [a.target for a in result.artifacts] == ["torchscript"]
    assert not list(out.glob("*.mlpackage")) and not list(out.glob(".tmp-*"))
    with pytest.raises(ExportError, match="compiled parts"):
        coreml._import_coremltools()
    monkeypatch.setattr(coreml.sys, "platform", "win32")  # only for the message: coremltools is imported already
    msg = coreml._compiled_parts_missing(ImportError("No module named 'coremltools.libmilstoragepython'"))
    assert msg.endswith("coremltools publishes no build for this platform "
                        f"({coreml.platform.system() or 'win32'}) and its source package lacks them; export Core ML "
                        "on macOS or Linux"), msg


# --- 3. the notebook pipeline's data set, pickled for DataLoader workers started by spawn --------------------------
def test_notebook_dataset_pickles_for_spawned_workers(monkeypatch):
    """A Dataset class defined inside notebook_pipeline_ips could not be pickled: ``--num-workers N`` crashed where
    workers are spawned (macOS, Windows, Python 3.14's forkserver). Each DataLoader's data set is pickled here as
    spawn would pickle it."""
    import torch

    from fer_edge.benchmarks import train_throughput as tt

    real = torch.utils.data.DataLoader
    clones = []

    def loader(dataset, *args, **kwargs):
        clones.append(pickle.loads(pickle.dumps(dataset)))  # what a spawned worker receives
        return real(dataset, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", loader)
    images = torch.randint(0, 256, (8, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8) % 7
    assert tt.notebook_pipeline_ips(images, labels, "fer_nano", torch.device("cpu"), steps=1, batch_size=4) > 0
    (clone,) = clones
    x, y = clone[3]
    assert len(clone) == 8 and tuple(x.shape) == (1, 48, 48) and x.dtype == torch.float32 and int(y) == 3


# --- 4. --name values Windows cannot take ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, says", [
    ("c:model", "it contains ':'"),          # on Windows: relative to drive C:'s working folder, outside --out
    ("v2:final", "it contains ':'"),         # on Windows: an NTFS alternate data stream of "v2"
    ('a"b', "it contains '\"'"),
    ("what?*", "it contains '*', '?'"),
    ("a<b>|c", "it contains '<', '>', '|'"),
    ("tab\there", "it contains '\\t'"),
    ("del\x7f", "it contains '\\x7f'"),
    ("NUL.v2", "Windows takes a file named 'NUL' before its first dot for a device"),
    ("com1.final", "Windows takes a file named 'COM1' before its first dot for a device"),
])
def test_a_name_windows_cannot_take_is_refused(tiny_checkpoint, tmp_path, name, says):
    from fer_edge.exporters import export
    from fer_edge.exporters.api import check_name

    out = tmp_path / "out"
    with pytest.raises(FerEdgeError, match="is not a portable file name stem") as e:
        check_name(name)
    assert says in str(e.value)
    with pytest.raises(FerEdgeError, match="is not a portable file name stem"):
        export(tiny_checkpoint, ["torchscript"], ["fp32"], out, validate=False, name=name)
    res = _cli("export", tiny_checkpoint, "-t", "torchscript", "--no-validate", "--name", name, "--out", out)
    # exit status 2, a usage error, as the other --name refusals
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"error: --name {name!r} is not a portable file name stem" in _text(res)
    assert not out.exists()


@pytest.mark.parametrize("name", ["aux", "con", "v2.final", "CONSOLE.v2", "model-v2_final+x"])
def test_portable_names_are_still_taken(name):
    """A device name without a dot is safe (the artifacts append ``_<precision>``), and so is a dot elsewhere."""
    from fer_edge.exporters.api import check_name

    check_name(name)
