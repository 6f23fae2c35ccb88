"""QA of the distillation teachers (fer_edge.training.teachers): errors that name --distill and the file, and
teachers whose outputs are not finite refused before training."""
from __future__ import annotations

import pytest
import torch

from fer_edge.checkpoint import load_checkpoint, save_checkpoint, split_checkpoint
from fer_edge.constants import LABELS
from fer_edge.errors import FerEdgeError, TrainingError
from fer_edge.training.teachers import check_teacher_outputs, load_teachers, precompute_teacher_probs, resolve_teacher

CPU = torch.device("cpu")


def _copy(src, dest, **changes):
    """A copy of checkpoint ``src`` at ``dest`` with top-level fields changed (``state_dict`` tensors too)."""
    raw = dict(load_checkpoint(src).raw)
    raw.update(changes)
    save_checkpoint(dest, raw)
    return dest


def _nan_copy(src, dest):
    sd = {k: v.clone() for k, v in load_checkpoint(src).state_dict.items()}
    name = next(k for k, v in sd.items() if v.is_floating_point() and k.endswith("weight"))
    sd[name].fill_(float("nan"))
    return _copy(src, dest, state_dict=sd)


def _load(path, runtime="torch", **kw):
    return load_teachers([str(path)], list(LABELS), CPU, runtime, **kw)


def test_a_teacher_of_an_unknown_model_names_distill_and_the_file(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "future.pt", model="future_net")
    with pytest.raises(FerEdgeError) as e:
        _load(bad)
    msg = str(e.value)
    assert msg.startswith(f"--distill {bad}: ") and "teacher" in msg and "unknown model 'future_net'" in msg


def test_a_teacher_with_bad_model_kwargs_reads_as_the_teachers_fault(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "kw.pt", model_kwargs={"foo": 1})
    with pytest.raises(FerEdgeError) as e:
        _load(bad)
    msg = str(e.value)
    assert msg.startswith(f"--distill {bad}: the teacher") and "fer_nano" in msg and "foo" in msg


def test_a_missing_or_corrupt_teacher_names_distill_and_the_file(tiny_checkpoint, tmp_path):
    with pytest.raises(FerEdgeError, match=r"^--distill nope\.pt: no such checkpoint file or shipped model"):
        resolve_teacher("nope.pt")
    with pytest.raises(FerEdgeError, match=r"^--distill nope\.pt: "):
        _load("nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny_checkpoint.read_bytes()[:300])
    with pytest.raises(FerEdgeError) as e:
        _load(corrupt)
    msg = str(e.value)
    assert msg.startswith(f"--distill {corrupt}: not a readable checkpoint") and msg.count(str(corrupt)) == 1
    with pytest.raises(FerEdgeError, match=r"^--distill .*: a folder"):
        resolve_teacher(str(tmp_path))


def test_a_checkpoint_part_as_a_teacher_says_to_join_the_parts_first(tiny_checkpoint, tmp_path):
    split_checkpoint(tiny_checkpoint, tmp_path / "t", max_bytes=200_000)
    part0 = tmp_path / "t.part0.pt"
    assert part0.is_file()
    with pytest.raises(FerEdgeError) as e:
        _load(part0)
    msg = str(e.value)
    assert msg.startswith(f"--distill {part0}: ") and "python -m fer_edge.checkpoint join" in msg
    with pytest.raises(FerEdgeError, match="python -m fer_edge.checkpoint join"):  # the prefix, not yet joined
        _load(tmp_path / "t")


def test_a_nan_teacher_is_refused_when_loaded_for_online_distillation(tiny_checkpoint, tmp_path):
    nan = _nan_copy(tiny_checkpoint, tmp_path / "nan.pt")
    (good,) = _load(tiny_checkpoint, probe=False)
    before = torch.random.get_rng_state()
    check_teacher_outputs([good])  # a sound teacher passes the probe
    assert torch.equal(torch.random.get_rng_state(), before)  # and the probe leaves the training's RNG alone
    with pytest.raises(TrainingError) as e:
        load_teachers([str(tiny_checkpoint), str(nan)], list(LABELS), CPU, "torch")
    msg = str(e.value)
    assert f"--distill {nan}" in msg and "not finite" in msg and str(tiny_checkpoint) not in msg


def test_a_nan_teacher_is_refused_when_loaded_in_onnxruntime(tiny_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    nan = _nan_copy(tiny_checkpoint, tmp_path / "nan.pt")
    with pytest.raises(TrainingError, match=rf"--distill {nan}: .*not finite"):
        _load(nan, runtime="onnxruntime", threads=1)


def test_offline_labels_that_are_not_finite_name_the_teacher(tiny_checkpoint, tmp_path):
    nan = _nan_copy(tiny_checkpoint, tmp_path / "nan.pt")
    good = _load(tiny_checkpoint)
    bad = _load(nan, probe=False)  # as if the probe had passed: the labelling must still catch it
    images = torch.randint(0, 256, (10, 48, 48), dtype=torch.uint8)
    assert torch.isfinite(precompute_teacher_probs(good, images, 2.0, tta=True, batch_size=4)).all()
    with pytest.raises(TrainingError) as e:
        precompute_teacher_probs(good + bad, images, 2.0, tta=False, batch_size=4)
    msg = str(e.value)
    assert f"--distill {nan}" in msg and "not finite" in msg and f"--distill {tiny_checkpoint}" not in msg
    with pytest.raises(TrainingError, match="--distill-temperature"):  # finite logits, a softmax that overflows
        precompute_teacher_probs(good, images, 1e-45, tta=False)


def test_a_nan_teacher_stops_offline_and_replay_training_before_the_first_epoch(synthetic_csv, tiny_checkpoint,
                                                                               tmp_path):
    from fer_edge.training import TrainConfig, train

    nan = _nan_copy(tiny_checkpoint, tmp_path / "nan.pt")
    for targets, views in (("offline", None), ("replay", 2)):
        cfg = TrainConfig(data=str(synthetic_csv), model="simple_cnn", out=str(tmp_path / targets), epochs=1,
                          batch_size=32, seed=0, device="cpu", augment="light", max_steps_per_epoch=2, amp="off",
                          distill=[str(nan)], teacher_runtime="torch", distill_targets=targets,
                          distill_views=views)
        with pytest.raises(TrainingError, match="not finite") as e:
            train(cfg, progress=False)
        assert "diverged" not in str(e.value) and "nan.pt" in str(e.value)
