"""QA of quantization, round 4: ``--qat`` trains in float32 (``--amp auto`` is off with it, bf16/fp16 refused),
what NNCF's ``--overflow-fix`` modes do to an IR's weights and what the manifest says of them, and how many
calibration images OpenVINO's full bias correction sees."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_training import _cfg  # the shared run config
from typer.testing import CliRunner

from fer_edge.errors import TrainingError
from fer_edge.training import TrainConfig, train
from fer_edge.training import trainer as trainer_mod
from fer_edge.training.trainer import Trainer, autocast_dtype, validate_config


# --- 1. --qat and --amp ------------------------------------------------------------------------------------------
def test_amp_auto_is_float32_under_qat(monkeypatch):
    """bf16/fp16 autocast casts QuantSim's rounded activations and weights to 16 bits inside each layer: 46% of
    nano's stem.1.0 inputs came off the uint8 grid under bf16 (the default --amp auto on a CPU with native bf16,
    fp16 on CUDA)."""
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: True)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(TrainConfig(data="d"), cpu) == torch.bfloat16  # what auto picks without --qat
    assert autocast_dtype(TrainConfig(data="d"), cuda) == torch.float16
    assert autocast_dtype(TrainConfig(data="d", qat=True), cpu) is None
    assert autocast_dtype(TrainConfig(data="d", qat=True), cuda) is None
    assert autocast_dtype(TrainConfig(data="d", qat=True, amp="off"), cpu) is None


def test_qat_with_a_16_bit_amp_is_refused_with_the_other_problems(synthetic_csv, tmp_path):
    for amp in ("bf16", "fp16"):
        with pytest.raises(TrainingError) as e:
            validate_config(TrainConfig(data="d", qat=True, amp=amp, lr=-1.0))
        msg = str(e.value)
        assert f"--amp {amp} with --qat" in msg and "--amp off" in msg
        assert "--lr must be positive" in msg  # listed with the others, not alone
    validate_config(TrainConfig(data="d", qat=True, amp="off"))
    validate_config(TrainConfig(data="d", qat=True))
    validate_config(TrainConfig(data="d", amp="bf16"))  # without --qat it stands
    from fer_edge.cli import app

    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--out", str(out),
                                 "--qat", "--amp", "bf16", "--no-progress"])
    assert r.exit_code == 2, r.output
    assert "--amp bf16 with --qat" in " ".join(r.output.split())
    assert not out.exists()  # refused before any work


def test_a_qat_run_under_amp_auto_trains_and_resumes_in_float32(synthetic_csv, tmp_path, monkeypatch):
    """On a CPU with native bf16 (made so here), a QAT run under the default --amp auto, interrupted after its first
    epoch and resumed, gives exactly the losses of an --amp off run: no epoch ran under autocast."""
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: True)
    kw = dict(epochs=2, max_steps_per_epoch=3, qat=True, mixup=0.0, num_threads=1)
    ref = train(_cfg(synthetic_csv, tmp_path / "off", amp="off", **kw), progress=False)

    class Stop(Exception):
        pass

    orig = Trainer._write_history

    def stop_after_the_first_epoch(self, history):
        orig(self, history)
        raise Stop

    cfg = _cfg(synthetic_csv, tmp_path / "auto", **kw)  # amp "auto"
    monkeypatch.setattr(Trainer, "_write_history", stop_after_the_first_epoch)
    with pytest.raises(Stop):
        train(cfg, progress=False)
    monkeypatch.setattr(Trainer, "_write_history", orig)
    resumed = train(cfg, resume=True, progress=False)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in ref.history]


# --- 2. --overflow-fix: what each mode does, and what the manifest says ------------------------------------------
def _weight_bits(xml) -> list[tuple[str, int | None]]:
    """(op type, largest |int8 weight|, None for a float layer) of each Convolution, GroupConvolution and MatMul
    of an IR, in order."""
    import openvino as ov

    def int8_const(node):
        stack = [node]
        while stack:
            n = stack.pop()
            if n.get_type_name() == "Constant" and n.get_element_type() in (ov.Type.i8, ov.Type.u8):
                return n.get_data()
            stack += [n.input_value(i).get_node() for i in range(n.get_input_size())]
        return None

    rows = []
    for op in ov.Core().read_model(str(xml)).get_ordered_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul"):
            w = int8_const(op.input_value(1).get_node())
            rows.append((op.get_type_name(), None if w is None else int(np.abs(w.astype(np.int32)).max())))
    return rows


def test_overflow_fix_descriptions_say_what_nncf_does_to_the_weights(tiny_checkpoint, tmp_path):
    """``first-layer`` gives the first *quantized* convolution 7-bit weights (the first convolution is float, so it
    is not a no-op), ``enable`` every layer but the depthwise ones, ``disable`` none: the IR's int8 weights say so,
    and so must the text the manifest records (it said "first layer only" and "7-bit weights in every layer")."""
    import openvino as ov

    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.exporters.openvino import OVERFLOW_FIX, convert, quantize_int8

    base = convert(load_checkpoint(tiny_checkpoint).build_model().eval())
    calib = np.random.default_rng(0).normal(size=(10, 1, 48, 48)).astype(np.float32)
    seen = {}
    for fix in OVERFLOW_FIX:
        q, _ = quantize_int8(base.clone(), calib, fix)
        ov.save_model(q, str(tmp_path / f"{fix}.xml"), compress_to_fp16=False)
        seen[fix] = _weight_bits(tmp_path / f"{fix}.xml")
    seven = lambda b: b is not None and b <= 64  # noqa: E731  (-64..64: NNCF's half range)
    eight = lambda b: b is not None and b > 64  # noqa: E731
    rows = seen["first-layer"]
    assert rows[0][1] is None and seven(rows[1][1]) and all(eight(b) for _, b in rows[2:]), rows
    assert any(t == "GroupConvolution" for t, _ in rows)  # fer_nano has depthwise convolutions to tell apart
    assert all(eight(b) if t == "GroupConvolution" else seven(b) for t, b in seen["enable"][1:]), seen["enable"]
    assert all(eight(b) for _, b in seen["disable"][1:]), seen["disable"]
    text = {k: v[1] for k, v in OVERFLOW_FIX.items()}
    assert "7-bit weights in the first quantized convolution" in text["first-layer"]
    assert "stays in float" in text["first-layer"] and "8-bit in the others" in text["first-layer"]
    assert "except the depthwise convolutions" in text["enable"]
    assert "8-bit weights in every quantized layer" == text["disable"]


# --- 3. the images OpenVINO's full bias correction sees -------------------------------------------------------------
def test_the_manifest_records_how_many_images_the_bias_correction_saw(tiny_checkpoint, synthetic_csv, tmp_path,
                                                                       monkeypatch):
    """NNCF's full bias correction takes max(int(0.2 * subset_size), 1) images (the first ones), not subset_size:
    the manifest said ``subset_size: N`` beside ``fast_bias_correction: false`` and nothing else."""
    import nncf.quantization.algorithms.post_training.pipeline as pipeline

    from fer_edge.exporters import export

    used = []

    class Spy(pipeline.BiasCorrection):
        def __init__(self, subset_size, *a, **k):
            used.append(subset_size)
            super().__init__(subset_size, *a, **k)

    monkeypatch.setattr(pipeline, "BiasCorrection", Spy)
    n = 39  # a fifth is 7.8: NNCF truncates
    res = export(tiny_checkpoint, ["openvino"], ["int8"], tmp_path / "o", calib_data=synthetic_csv, calib_size=n,
                 validate=False, data_progress=False)
    assert used == [7]
    (entry,) = json.loads((res.out_dir / "manifest.json").read_text())["artifacts"]
    q = entry["export"]["quantization"]
    assert q["subset_size"] == n and q["fast_bias_correction"] is False
    assert q["bias_correction"]["images"] == 7
    assert "the first 7 of the 39 calibration images" in q["bias_correction"]["which"]
    from fer_edge.exporters.openvino import bias_correction_images

    assert [bias_correction_images(k) for k in (1, 4, 5, 100, 500)] == [1, 1, 1, 20, 100]
