"""QA of ``fer-edge train``: one-image steps through a BatchNorm2d on a 1x1 map, a teacher given twice, --init
weights with NaN outputs, NaN validation logits, a validation split that copies the training split, the count
options listed with the others, an empty --wandb."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from test_training import _cfg as _training_cfg  # the shared run config
from typer.testing import CliRunner

from fer_edge.checkpoint import load_checkpoint, save_checkpoint
from fer_edge.cli import app
from fer_edge.errors import TrainingError
from fer_edge.training import train

runner = CliRunner()


def _cfg(data, out, **kw):
    """test_training's config, one epoch of one step unless told."""
    return _training_cfg(data, out, **{"epochs": 1, "max_steps_per_epoch": 1, **kw})


def test_a_batchnorm2d_on_a_1x1_map_is_refused_a_one_image_step(synthetic_csv, tmp_path):
    """fer_small with five stages pools to 1x1 before a BatchNorm2d: --batch-size 1 crashed in the first step
    with "Expected more than 1 value per channel" (the check looked for BatchNorm1d only)."""
    with pytest.raises(TrainingError, match=r"fer_small has BatchNorm2d layers whose feature map is 1x1 "
                                            r"\(stages\.4\.1\.conv1\.1, .*\), which need at least 2 images a "
                                            r"training step, but a step gets 1 \(--batch-size 1"):
        train(_cfg(synthetic_csv, tmp_path / "r", model="fer_small", model_kwargs={"widths": [8, 8, 8, 8, 8]},
                   batch_size=1), progress=False)
    assert not (tmp_path / "r").exists()


def test_the_one_value_probe_leaves_the_model_as_it_was():
    from fer_edge.models import create_model
    from fer_edge.training.trainer import _single_value_norms

    model = create_model("fer_small", num_classes=7, widths=[8, 8, 8, 8, 8])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert "BatchNorm2d layers whose feature map is 1x1" in _single_value_norms(model)
    assert all(m.training for m in model.modules())  # its train mode is restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats untouched
    assert _single_value_norms(create_model("fer_small", num_classes=7)) == ""  # 3x3 at the end: one image trains
    assert _single_value_norms(create_model("keras_cnn", num_classes=7)) == "BatchNorm1d layers"


def test_a_teacher_given_twice_is_a_usage_error_before_the_data_is_read(synthetic_csv, tiny_checkpoint, tmp_path,
                                                                       monkeypatch):
    """--distill X --distill X (or a copy of X) trained with X counted twice; eval refuses such a pair."""
    copy = tmp_path / "copy.pt"
    shutil.copyfile(tiny_checkpoint, copy)
    import fer_edge.data

    def no_data(*a, **k):
        raise AssertionError("the data was read")

    monkeypatch.setattr(fer_edge.data, "load_split", no_data)
    base = ["train", "--data", str(synthetic_csv), "--model", "fer_nano", "--out", str(tmp_path / "r"),
            "--epochs", "1"]
    for teachers, words in (([tiny_checkpoint, tiny_checkpoint], f"--distill {tiny_checkpoint} is given twice"),
                            ([tiny_checkpoint, copy], f"--distill {tiny_checkpoint} and {copy} hold the same "
                                                      "weights (same SHA-256)")):
        r = runner.invoke(app, base + [a for t in teachers for a in ("--distill", str(t))])
        err = " ".join(r.stderr.split())
        assert r.exit_code == 2 and words in err and "give each teacher once" in err, err
    assert not (tmp_path / "r").exists()


def _negative_variance(tiny_checkpoint, path):
    ck = load_checkpoint(tiny_checkpoint)
    state = dict(ck.state_dict)
    name = next(k for k in state if k.endswith("running_var"))
    state[name] = -state[name].abs() - 1.0  # finite, but the square root of a negative variance is NaN
    save_checkpoint(path, {**ck.raw, "state_dict": state})
    return path


def test_init_weights_with_nan_outputs_are_refused(synthetic_csv, tiny_checkpoint, tmp_path):
    """A negative BatchNorm running_var passed the inf/NaN tensor check: the run 'succeeded' with val_loss nan."""
    bad = _negative_variance(tiny_checkpoint, tmp_path / "negvar.pt")
    with pytest.raises(TrainingError, match=r"--init .*negvar\.pt: its outputs on a probe batch are not finite"):
        train(_cfg(synthetic_csv, tmp_path / "r", model="fer_nano", init=str(bad)), progress=False)
    assert not (tmp_path / "r").exists()


def test_non_finite_validation_logits_stop_the_run(synthetic_csv, tmp_path, monkeypatch):
    """An accuracy from the argmax of NaN logits was reported (and saved as the best epoch)."""
    import fer_edge.training.trainer as trainer

    def nan_logits(model, images, *a, **k):
        return torch.full((len(images), 7), float("nan"))

    monkeypatch.setattr(trainer, "predict_logits", nan_logits)
    with pytest.raises(TrainingError, match=r"the model's outputs on the validation split are not finite numbers "
                                            r"\(NaN or inf\) at epoch 1, on 84 of 84 images.*nothing was saved"):
        train(_cfg(synthetic_csv, tmp_path / "r"), progress=False)
    assert not (tmp_path / "r" / "best.pt").exists() and not (tmp_path / "r" / "last.pt").exists()


def test_a_validation_split_copying_the_training_split_is_warned_of(synthetic_arrays, tmp_path):
    from fer_edge.data import load_split
    from fer_edge.data.synthetic import write_folder
    from fer_edge.training.trainer import setup_warnings

    arrays = synthetic_arrays["Training"]
    root = write_folder(tmp_path / "imgs", {"train": arrays, "val": arrays})  # val/ a copy of train/
    train_split, val_split = load_split(root, "train", progress=False), load_split(root, "val", progress=False)
    cfg = _cfg(root, tmp_path / "r")
    warnings = setup_warnings(cfg, train_split, val_split, torch.device("cpu"))
    assert any("the validation split (val) holds the same images and labels as the training split (train" in w
               for w in warnings), warnings
    # a copy in another order (here the files' names order them otherwise) is a copy too
    images, labels = arrays
    order = np.arange(len(labels))[::-1]
    shuffled = load_split(write_folder(tmp_path / "rev", {"val": (images[order], labels[order])}), "val",
                          progress=False)
    assert shuffled.fingerprint["sha256"] != train_split.fingerprint["sha256"]
    assert any("holds the same images and labels as the training split" in w
               for w in setup_warnings(cfg, train_split, shuffled, torch.device("cpu")))
    other = load_split(write_folder(tmp_path / "other", {"val": synthetic_arrays["PublicTest"]}), "val",
                       progress=False)
    assert not any("validation split" in w for w in setup_warnings(cfg, train_split, other, torch.device("cpu")))


def test_every_bad_count_and_an_empty_wandb_are_listed_at_once(synthetic_csv, tmp_path):
    """click's min= on --epochs (and the other counts) stopped at the first; --wandb "" turned logging off."""
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--out", str(tmp_path / "r"), "--epochs", "0",
                            "--lr", "nan", "--mix-prob", "2", "--batch-size", "0", "--patience", "-1", "--threads",
                            "-1", "--max-steps-per-epoch", "-1", "--wandb", ""])
    err = " ".join(r.stderr.split())
    assert r.exit_code == 2 and "bad training options" in err, err
    for words in ("--wandb is empty", "--lr must be a finite number", "--epochs must be at least 1",
                  "--batch-size must be at least 1", "--mix-prob is a probability", "--patience must be >= 0",
                  "--threads must be at least 0", "--max-steps-per-epoch must be at least 0"):
        assert words in err, (words, err)
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--out", str(tmp_path / "r"), "--distill",
                            "nano", "--distill-targets", "replay", "--distill-views", "0", "--epochs", "0"])
    err = " ".join(r.stderr.split())
    assert r.exit_code == 2 and "--distill-views must be at least 1, got 0" in err and "--epochs must" in err, err
    assert not (tmp_path / "r").exists()
