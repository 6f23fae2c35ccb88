"""Quantization-aware fine-tuning (``--qat``): where rounding is simulated, that it matches ONNX
Runtime's INT8 graph, and that a QAT run still writes an ordinary FP32 checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fer_edge.checkpoint import load_checkpoint
from fer_edge.cli import app
from fer_edge.models import create_model, list_models
from fer_edge.training import TrainConfig, train
from fer_edge.training.qat import QuantSim, activation_points, fake_quant_weight

runner = CliRunner()


def test_activation_points_follow_fusion():
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True),  # fused: only the ReLU
                        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),  # no activation: the BN output
                        nn.MaxPool2d(2), nn.Conv2d(4, 4, 1),  # max-pool adds no range; a bare conv's output
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    assert activation_points(seq, torch.randn(2, 1, 12, 12)) == ["2", "4", "6", "7", "9"]


def test_fer_nano_points_are_those_of_its_int8_graph():
    pts = activation_points(create_model("fer_nano", num_classes=7), torch.randn(2, 1, 48, 48))
    # stem: conv+BN+ReLU twice -> the ReLUs; per block: depthwise BN (feeds the pointwise conv),
    # the ReLU after the first pointwise, the second separable's two BNs, the shortcut BN, the add's ReLU
    per_block = ["body.0.1", "body.0.4", "body.1.1", "body.1.3", "shortcut.1", "act"]
    assert pts == ["stem.0.2", "stem.1.2"] + [f"blocks.{b}.{p}" for b in range(4) for p in per_block] + ["pool", "fc"]


def test_fake_quant_weight_rounds_per_channel_and_passes_gradients():
    w = torch.randn(6, 3, 3, 3) * torch.arange(1, 7).view(6, 1, 1, 1)  # channels of very different ranges
    w.requires_grad_(True)
    q = fake_quant_weight(w)
    scale = w.detach().abs().amax(dim=(1, 2, 3)) / 127
    steps = q.detach() / scale.view(6, 1, 1, 1)
    assert torch.allclose(steps, steps.round(), atol=1e-3)  # on each channel's own int8 grid
    assert ((q - w).abs() <= scale.view(6, 1, 1, 1) / 2 + 1e-6).all()
    assert not torch.equal(q, w)
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight-through


@pytest.mark.parametrize("name", list_models())
def test_quant_sim_trains_every_model_and_leaves_it_unchanged(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    keys = sorted(model.state_dict())
    x = torch.randn(4, 1, 48, 48)
    sim = QuantSim(model, model, x[:2])
    model.train()
    y = sim(x)
    assert y.shape == (4, 7) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1)
    model.eval()
    with torch.no_grad():
        plain, again, simulated = model(x), model(x), sim(x)
    assert torch.equal(plain, again)  # hooks are idle outside the simulated forward
    assert not torch.equal(plain, simulated)
    assert sorted(model.state_dict()) == keys  # nothing added to the checkpoint


def test_ddp_ranks_average_their_ranges_and_round_alike():
    # two "ranks" with identical weights observe different shards; the all-reduce is done by hand here
    torch.manual_seed(0)
    model = create_model("fer_nano", num_classes=7).train()
    sims = [QuantSim(model, model, torch.randn(2, 1, 48, 48)) for _ in range(2)]
    for sim, scale in zip(sims, (1.0, 3.0)):
        sim(torch.randn(8, 1, 48, 48) * scale)
    before = [torch.stack([t.reshape(()) for t in sim.ranges()]) for sim in sims]
    assert not torch.allclose(before[0], before[1])
    total = before[0] + before[1]
    for sim in sims:
        sim.average_ranges(lambda t: total.clone(), world=2)
    after = [torch.stack([t.reshape(()) for t in sim.ranges()]) for sim in sims]
    assert torch.equal(after[0], after[1]) and torch.allclose(after[0], total / 2)
    state = sims[0].state_dict()["<input>"]  # the buffers themselves changed, so the checkpoint holds them
    assert float(state["activation_post_process.max_val"]) == pytest.approx(float(total[1] / 2))


def test_simulation_rounds_where_and_as_coarsely_as_onnxruntime_int8():
    """Given the same calibration batch, the simulated activation ranges are ONNX Runtime's, and the
    simulated forward is as far from FP32 as the INT8 graph is. (The two rounding errors themselves
    are not the same numbers: a scale 0.5% off already rounds a value 100 steps out differently.)"""
    import tempfile
    from pathlib import Path

    import onnxruntime as ort
    from onnx import numpy_helper

    from fer_edge.exporters.onnx import fp32_proto, quantize_int8

    torch.manual_seed(0)
    model = create_model("fer_nano", num_classes=7)
    model.train()
    with torch.no_grad():  # BatchNorm statistics of real activations
        for _ in range(5):
            model(torch.randn(32, 1, 48, 48))
    with torch.no_grad():  # and a classifier that separates them, so that logits are not all near zero
        model.fc.weight.mul_(50)
    model.eval()
    calib, x = torch.randn(64, 1, 48, 48), torch.randn(256, 1, 48, 48).clamp(-3, 3)
    sim = QuantSim(model, model, calib[:2])
    with torch.no_grad():
        sim(calib)  # the first batch sets every observer's min/max, as MinMax calibration does
        for fq in [sim.input_fq, *sim.fq.values()]:
            fq.disable_observer()
        fp32, simulated = model(x).numpy(), sim(x).numpy()
    with tempfile.TemporaryDirectory() as d:
        proto = quantize_int8(fp32_proto(model), calib.numpy(), "minmax", Path(d))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    ort_scales = [float(inits[n.input[1]]) for n in proto.graph.node
                  if n.op_type == "QuantizeLinear" and n.input[0] != "image"]
    ort_scales = sorted(set(ort_scales))  # a max-pool's output reuses its input's scale
    sim_scales = sorted(float(fq.scale) for fq in sim.fq.values())
    assert len(sim_scales) == len(ort_scales)
    np.testing.assert_allclose(sim_scales, ort_scales, rtol=0.02)

    so = ort.SessionOptions()
    so.add_session_config_entry("session.x64quantprecision", "1")
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    int8 = sess.run(None, {"image": x.numpy()})[0]
    ratio = np.abs(simulated - fp32).mean() / np.abs(int8 - fp32).mean()
    assert 0.5 < ratio < 2, ratio


def test_qat_run_writes_a_plain_fp32_checkpoint(synthetic_csv, tmp_path):
    base = dict(data=str(synthetic_csv), model="fer_nano", epochs=2, batch_size=32, lr=1e-3, seed=0, device="cpu",
                augment="light", max_steps_per_epoch=3)
    plain = train(TrainConfig(out=str(tmp_path / "plain"), **base), progress=False)
    qat = train(TrainConfig(out=str(tmp_path / "qat"), qat=True, **base), progress=False)
    assert qat.history[0]["train_loss"] != plain.history[0]["train_loss"]  # the rounding is in the loop
    ck = load_checkpoint(tmp_path / "qat" / "best.pt")
    assert ck.train_config["qat"] is True
    ref = load_checkpoint(tmp_path / "plain" / "best.pt")
    assert ck.state_dict.keys() == ref.state_dict.keys()
    ck.build_model()  # loads into the registered model like any checkpoint


def test_cli_qat_flag_reaches_the_config(synthetic_csv, tmp_path):
    out = tmp_path / "q"
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--out", str(out),
                            "--epochs", "1", "--batch-size", "32", "--max-steps-per-epoch", "2", "--device", "cpu",
                            "--qat", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "QAT:" in r.output
    assert load_checkpoint(out / "best.pt").train_config["qat"] is True


def test_int8_sensitivity_benchmark(tiny_checkpoint, synthetic_csv, tmp_path, capsys):
    """The sensitivity script reports everything rounded, activations only, weights only, and
    weights plus each activation tensor in turn; a missing checkpoint is an error, not a table."""
    import json

    from fer_edge.benchmarks.int8_sensitivity import main

    out = tmp_path / "s.json"
    assert main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--calib-size", "210",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = res["agreement"]
    assert set(rows) == {"everything", "activations only", "weights only"}
    assert all(0 <= a <= 1 for a in rows.values())
    per = res["weights_plus_one_activation"]
    assert per and all(0 <= a <= 1 for a in per.values())
    assert res["calibration_images"] == 210
    printed = capsys.readouterr().out
    assert "weights only" in printed and f"weights + {next(iter(per))}" in printed
    assert main([str(tmp_path / "missing.pt"), "--calib-data", str(synthetic_csv)]) == 1
