"""Training, resume, eval and their CLI, on tiny synthetic data."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fer_edge.checkpoint import load_checkpoint
from fer_edge.cli import app
from fer_edge.errors import FerEdgeError, TrainingError
from fer_edge.training import TrainConfig, train
from fer_edge.training.augment import PRESETS, augment_batch, mix_batch

runner = CliRunner()


def _cfg(data, out, **kw):
    base = dict(data=str(data), model="simple_cnn", out=str(out), epochs=3, batch_size=32, lr=3e-3, seed=0,
                device="cpu", augment="light", max_steps_per_epoch=6)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.real_plots
def test_training_beats_chance_and_writes_run_dir(synthetic_csv, tmp_path):
    out = tmp_path / "run"
    res = train(_cfg(synthetic_csv, out, epochs=4), progress=False)
    assert res.best_accuracy > 0.4  # chance is 1/7
    for name in ("best.pt", "last.pt", "metrics.json", "history.csv", "curves.png", "confusion_matrix.png",
                 "per_class.csv"):
        assert (out / name).is_file(), name
    from PIL import Image

    for name in ("curves.png", "confusion_matrix.png"):  # drawn by matplotlib (real_plots), not stand-ins
        assert min(Image.open(out / name).size) > 300, name
    ck = load_checkpoint(out / "best.pt")
    assert ck.model_name == "simple_cnn" and ck.labels[0] == "angry" and len(ck.labels) == 7
    assert ck.train_config["model"] == "simple_cnn" and ck.train_config["seed"] == 0
    assert 0 < ck.normalization.std < 1 and ck.data["train"]["split"] == "Training"
    assert abs(ck.metrics["val_accuracy"] - res.best_accuracy) < 1e-9
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert len(rows) == 4 and float(rows[-1]["lr"]) < float(rows[0]["lr"]) * 10
    assert all(float(r["val_seconds"]) > 0 and float(r["epoch_seconds"]) > 0 for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_val"]["n"] == 84 and set(metrics["best_val"]["per_class"]) == set(ck.labels)


def test_seeded_runs_are_deterministic(synthetic_csv, tmp_path):
    a = train(_cfg(synthetic_csv, tmp_path / "a", epochs=2), progress=False)
    b = train(_cfg(synthetic_csv, tmp_path / "b", epochs=2), progress=False)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]


@pytest.mark.parametrize("qat", [False, True], ids=["fp32", "qat"])
def test_resume_matches_uninterrupted_run(synthetic_csv, tmp_path, qat):
    full = train(_cfg(synthetic_csv, tmp_path / "full", epochs=3, ema=0.9, mixup=0.2, qat=qat), progress=False)
    # "interrupt" after 2 epochs: run a 3-epoch config, stopping early by truncating at epoch 2
    part_cfg = _cfg(synthetic_csv, tmp_path / "part", epochs=3, ema=0.9, mixup=0.2, qat=qat)
    from fer_edge.training.trainer import Trainer

    class Stop(Exception):
        pass

    calls = {"n": 0}
    orig = Trainer._write_history

    def write_and_maybe_stop(self, history):
        orig(self, history)
        calls["n"] += 1
        if calls["n"] == 2:
            raise Stop

    Trainer._write_history = write_and_maybe_stop
    try:
        with pytest.raises(Stop):
            train(part_cfg, progress=False)
    finally:
        Trainer._write_history = orig
    resumed = train(part_cfg, resume=True, progress=False)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    sa = load_checkpoint(tmp_path / "full" / "last.pt").state_dict
    sb = load_checkpoint(tmp_path / "part" / "last.pt").state_dict
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sigterm_stops_training_like_ctrl_c_and_the_run_resumes(synthetic_csv, tmp_path, monkeypatch, capsys):
    import os
    import signal

    from fer_edge.training.trainer import Trainer

    cfg = _cfg(synthetic_csv, tmp_path / "r", epochs=3)
    outer = []  # if training did not catch SIGTERM, this stand-in would, so the test fails instead of pytest dying
    prev = signal.signal(signal.SIGTERM, lambda *a: outer.append(a))
    orig = Trainer._write_history

    def write_then_kill(self, history):
        orig(self, history)
        if len(history) == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "_write_history", write_then_kill)
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            train(cfg, progress=False)
        handler_after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, prev)
    assert outer == [] and handler_after is not prev and callable(handler_after)  # the stand-in is back in place
    assert "interrupted: the last finished epoch is in" in " ".join(capsys.readouterr().err.split())  # the log goes to stderr
    assert load_checkpoint(tmp_path / "r" / "last.pt").raw["epoch"] == 1
    assert (tmp_path / "r" / "curves.png").is_file()  # the finished epoch's curves, as a finished run has them
    monkeypatch.undo()
    with pytest.raises(TrainingError, match=r"pass --resume to continue it"):  # unfinished: resume is the advice
        train(cfg, progress=False)
    assert train(cfg, resume=True, progress=False).epochs_run == 3


def test_log_lines_are_never_broken_at_the_console_width(synthetic_csv, tmp_path):
    """Off a terminal rich lays out 80 columns: an epoch's line was broken in two in a log file."""
    import io

    from rich.console import Console

    from fer_edge.training.trainer import Trainer

    buf = io.StringIO()
    trainer = Trainer(_cfg(synthetic_csv, tmp_path / "r"), progress=False,
                      console=Console(file=buf, width=40, force_terminal=False))
    line = "epoch 1/3 " + " ".join(f"figure{i} 0.{i}" for i in range(12))
    trainer.log(line)
    assert buf.getvalue() == line + "\n"


@pytest.mark.real_plots
def test_training_curves_have_whole_epoch_ticks(tmp_path, monkeypatch):
    """A 2-epoch run's curves were labelled 1.0, 1.2, ..., 2.0."""
    from matplotlib.figure import Figure

    from fer_edge.training.plots import plot_curves

    seen = []
    real = Figure.savefig

    def keep_ticks(fig, *a, **k):
        fig.canvas.draw()
        seen.extend(t for ax in fig.axes for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1])
        return real(fig, *a, **k)

    monkeypatch.setattr(Figure, "savefig", keep_ticks)
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.3 * e, "val_loss": 1.1 / e,
                "val_accuracy": 0.3 * e, "val_macro_f1": 0.2 * e, "lr": 1e-3} for e in (1, 2)]
    plot_curves(history, tmp_path / "curves.png")
    assert seen and all(float(t).is_integer() for t in seen), seen


def test_interrupt_before_any_epoch_says_nothing_can_resume(synthetic_csv, tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):  # Ctrl-C while the first epoch's checkpoint is being written
        raise KeyboardInterrupt

    monkeypatch.setattr("fer_edge.training.trainer.save_checkpoint", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(synthetic_csv, tmp_path / "r", epochs=2), progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert "interrupted: no epoch finished, so there is nothing to resume" in err, err
    assert not (tmp_path / "r" / "last.pt").exists()


@pytest.mark.parametrize("after", [0, 1])
def test_cli_train_interrupted_prints_one_line(synthetic_csv, tmp_path, monkeypatch, after):
    """QA: the CLI's catch-all added "the command stopped before it finished" below the trainer's own line."""
    from typer.testing import CliRunner

    from fer_edge.cli import app
    import fer_edge.training.trainer as tr

    real, calls = tr.save_checkpoint, []

    def interrupt(*args, **kwargs):  # Ctrl-C while epoch `after + 1`'s checkpoint is written
        calls.append(1)
        if len(calls) > after * 2:  # (each epoch writes last.pt and, when it is the best, best.pt)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tr, "save_checkpoint", interrupt)
    r = CliRunner().invoke(app, ["train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--epochs", "3",
                                 "--max-steps-per-epoch", "2", "--out", str(tmp_path / "r")], env={"COLUMNS": "250"})
    lines = [ln for ln in r.stderr.splitlines() if "interrupted" in ln]
    assert r.exit_code == 130 and len(lines) == 1 and lines[0].startswith("interrupted: "), r.stderr


def test_existing_run_is_not_overwritten_and_resume_checks_options(synthetic_csv, tmp_path):
    cfg = _cfg(synthetic_csv, tmp_path / "r", epochs=1)
    train(cfg, progress=False)
    # a finished run: --resume would only say "nothing to resume", so the advice is --init from it
    with pytest.raises(TrainingError, match=r"it is finished: to train on from it, pass --init .*best\.pt with "
                                            r"another --out, or choose another --out") as e:
        train(cfg, progress=False)
    assert "pass --resume" not in str(e.value)
    with pytest.raises(TrainingError, match="lr was"):
        train(_cfg(synthetic_csv, tmp_path / "r", epochs=1, lr=0.1), resume=True, progress=False)
    with pytest.raises(TrainingError, match="qat was False"):
        train(_cfg(synthetic_csv, tmp_path / "r", epochs=1, qat=True), resume=True, progress=False)
    with pytest.raises(TrainingError, match="does not exist"):
        train(_cfg(synthetic_csv, tmp_path / "none"), resume=True, progress=False)


def test_resume_refuses_every_changed_training_option_at_once(synthetic_csv, tmp_path):
    """--resume restores the optimizer, scheduler and EMA: a changed option would be ignored or break the
    schedule (a changed --max-steps-per-epoch crashed OneCycle two epochs later), and the checkpoints would
    record settings the run never had. Only where and how fast it runs may change."""
    train(_cfg(synthetic_csv, tmp_path / "r", epochs=2), progress=False)
    changed = dict(weight_decay=0.1, augment="strong", max_steps_per_epoch=3, patience=1, ema=0.99,
                   val_split="Training", init="nano")
    with pytest.raises(TrainingError) as e:
        train(_cfg(synthetic_csv, tmp_path / "r", epochs=2, **changed), resume=True, progress=False)
    from fer_edge.training.config import option_flag

    for k in changed:
        assert f"{option_flag(k)} was" in str(e.value), (k, str(e.value))  # the options as typed
    # the same data by another path, and another thread count: fine (the run is finished: nothing to do)
    other_path = os.path.relpath(synthetic_csv)
    res = train(_cfg(other_path, tmp_path / "r", epochs=2, num_threads=1), resume=True, progress=False)
    assert res.epochs_run == 2


def test_resume_compares_file_options_by_the_file_they_name(tmp_path, monkeypatch):
    from fer_edge.training.trainer import _same_setting

    (tmp_path / "t.pt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert _same_setting("init", "t.pt", str(tmp_path / "t.pt"))
    assert _same_setting("distill", ["t.pt"], [str(tmp_path / "t.pt")])
    assert not _same_setting("distill", ["t.pt"], ["t.pt", "t.pt"])
    assert not _same_setting("init", "t.pt", str(tmp_path / "other.pt"))
    assert not _same_setting("lr", 0.1, 0.2) and _same_setting("lr", 0.1, 0.1)


def _stopped_after_one_epoch(cfg, monkeypatch):
    from fer_edge.training.trainer import Trainer

    orig = Trainer._write_history

    def stop(self, history):
        orig(self, history)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_write_history", stop)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.undo()


def test_a_second_ctrl_c_while_an_interrupted_run_plots_still_leaves_its_curves(synthetic_csv, tmp_path,
                                                                                   monkeypatch):
    """QA: Ctrl-C pressed twice killed the run while it drew curves.png (killed by SIGINT, no plot)."""
    import signal

    from fer_edge.training.trainer import Trainer

    orig = Trainer._plot_curves

    def impatient(self, history):
        signal.raise_signal(signal.SIGINT)  # the second Ctrl-C, as the plot starts
        orig(self, history)

    monkeypatch.setattr(Trainer, "_plot_curves", impatient)
    out = tmp_path / "r"
    _stopped_after_one_epoch(_cfg(synthetic_csv, out, epochs=3), monkeypatch)  # raises KeyboardInterrupt once
    assert (out / "curves.png").is_file() and (out / "last.pt").is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_resume_from_another_folder_and_of_an_older_runs_config(synthetic_csv, tmp_path, monkeypatch):
    """Paths are recorded absolute, so the run resumes from another folder with the data named another way;
    a field the run's (older) config lacks is its default, so changing it on resume is refused too."""
    import shutil

    from fer_edge.checkpoint import save_checkpoint

    (tmp_path / "a").mkdir()
    shutil.copy(synthetic_csv, tmp_path / "a" / "d.csv.gz")
    monkeypatch.chdir(tmp_path / "a")
    _stopped_after_one_epoch(_cfg("d.csv.gz", tmp_path / "r", epochs=2), monkeypatch)
    last = tmp_path / "r" / "last.pt"
    raw = torch.load(last, weights_only=True)
    assert raw["train_config"]["data"] == str(tmp_path / "a" / "d.csv.gz")
    del raw["train_config"]["mixup"]  # as written before --mixup existed
    save_checkpoint(last, raw)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrainingError, match=r"mixup was 0\.0, now 0\.4") as e:
        train(_cfg("a/d.csv.gz", tmp_path / "r", epochs=2, mixup=0.4), resume=True, progress=False)
    assert "--threads" in str(e.value) and "--num-threads" not in str(e.value)  # the options as typed
    assert train(_cfg("a/d.csv.gz", tmp_path / "r", epochs=2), resume=True, progress=False).epochs_run == 2


def test_an_empty_init_is_refused_not_taken_as_no_init(synthetic_csv, tmp_path):
    with pytest.raises(FerEdgeError, match="checkpoint name is empty"):
        train(_cfg(synthetic_csv, tmp_path / "r", epochs=1, init=""), progress=False)
    assert not (tmp_path / "r").exists()


def test_resume_refuses_other_data_at_the_same_path(synthetic_csv, synthetic_arrays, tmp_path, monkeypatch):
    import shutil

    from fer_edge.data.synthetic import write_csv

    data = tmp_path / "fer2013.csv.gz"
    shutil.copy(synthetic_csv, data)
    _stopped_after_one_epoch(_cfg(data, tmp_path / "r", epochs=3), monkeypatch)

    arrays = {k: (v[0][::-1].copy(), v[1][::-1].copy()) for k, v in synthetic_arrays.items()}  # other order
    write_csv(data, arrays)
    with pytest.raises(TrainingError, match="--resume: the training split 'Training' and the validation split "
                                            "'PublicTest' of .* differ from the data the run in .* began on"):
        train(_cfg(data, tmp_path / "r", epochs=3), resume=True, progress=False)


def test_resume_of_a_finished_run_checks_the_data_before_saying_it_is_finished(synthetic_csv, synthetic_arrays,
                                                                                  tmp_path):
    """It said "nothing to resume" for a run finished on other images at the same path, as if they were its."""
    import shutil

    from fer_edge.data.synthetic import write_csv

    data = tmp_path / "fer2013.csv.gz"
    shutil.copy(synthetic_csv, data)
    train(_cfg(data, tmp_path / "r", epochs=1), progress=False)
    write_csv(data, {"Training": synthetic_arrays["Training"],
                     "PublicTest": tuple(a[:-7].copy() for a in synthetic_arrays["PublicTest"])})
    with pytest.raises(TrainingError, match="--resume: the validation split 'PublicTest' of .* differ"):
        train(_cfg(data, tmp_path / "r", epochs=1), resume=True, progress=False)


def test_a_folder_holding_a_run_without_last_pt_is_not_overwritten(synthetic_csv, tmp_path):
    out = tmp_path / "r"
    train(_cfg(synthetic_csv, out, epochs=1), progress=False)
    (out / "last.pt").unlink()
    before = (out / "best.pt").read_bytes()
    with pytest.raises(TrainingError, match=r"already holds a run \(best.pt, metrics.json, history.csv\); choose "
                                            r"another --out"):
        train(_cfg(synthetic_csv, out, epochs=1, seed=5), progress=False)
    # --resume does not send the user back to the refusal above ("start without --resume")
    with pytest.raises(TrainingError, match=r"last.pt does not exist, so the run in .* \(best.pt, metrics.json, "
                                            r"history.csv\) cannot be continued; to train on from its best.pt, "
                                            r"pass --init .*best.pt with another --out, or start a new run in "
                                            r"another --out, or delete the folder"):
        train(_cfg(synthetic_csv, out, epochs=1), resume=True, progress=False)
    assert (out / "best.pt").read_bytes() == before


def test_a_run_whose_last_pt_is_unreadable_is_not_sent_to_resume(synthetic_csv, tmp_path, monkeypatch):
    """The refusal said "pass --resume to continue it", and --resume then failed on the corrupt last.pt."""
    out = tmp_path / "r"
    _stopped_after_one_epoch(_cfg(synthetic_csv, out, epochs=3), monkeypatch)
    last = out / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    with pytest.raises(TrainingError) as e:
        train(_cfg(synthetic_csv, out, epochs=3), progress=False)
    msg = str(e.value)
    assert "pass --resume" not in msg, msg
    assert "--resume cannot continue it: " in msg and "last.pt: not a readable checkpoint" in msg, msg
    assert f"pass --init {out / 'best.pt'} with another --out" in msg, msg
    best_bytes = (out / "best.pt").read_bytes()
    (out / "best.pt").write_bytes(b"junk")  # nothing readable: only another --out is left
    with pytest.raises(TrainingError) as e:
        train(_cfg(synthetic_csv, out, epochs=3), progress=False)
    assert "--init" not in str(e.value) and "choose another --out" in str(e.value), str(e.value)
    # a last.pt that loads but holds no resume state (a best.pt copied over it): --resume would fail too
    (out / "best.pt").write_bytes(best_bytes)
    raw = torch.load(out / "best.pt", weights_only=True)
    raw.pop("resume", None)
    torch.save(raw, last)
    with pytest.raises(TrainingError) as e:
        train(_cfg(synthetic_csv, out, epochs=3), progress=False)
    assert f"--resume cannot continue it: {last} has no resume state" in str(e.value), str(e.value)


def test_resume_writes_a_broken_best_pt_again_from_last_pt_when_it_holds_the_best_epoch(synthetic_csv, tmp_path,
                                                                                          monkeypatch, capsys):
    """QA: a run whose best.pt was truncated resumed and finished with the corrupt best.pt left in place."""
    out = tmp_path / "r"
    _stopped_after_one_epoch(_cfg(synthetic_csv, out, epochs=3), monkeypatch)  # epoch 1: the best and the last
    last = load_checkpoint(out / "last.pt")
    (out / "best.pt").write_bytes((out / "best.pt").read_bytes()[:500])
    capsys.readouterr()

    def stop(*a, **k):  # Ctrl-C at the resumed run's first step: only what resuming did is left
        raise KeyboardInterrupt

    monkeypatch.setattr("fer_edge.training.trainer.augment_batch", stop)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(synthetic_csv, out, epochs=3), resume=True, progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert "best.pt: not a readable checkpoint" in err and "written again from" in err, err
    best = load_checkpoint(out / "best.pt")
    assert best.epoch == 1 and "resume" not in best.raw
    assert all(torch.equal(best.state_dict[k], last.state_dict[k]) for k in last.state_dict)
    row = last.raw["resume"]["history"][0]
    assert best.metrics["val_accuracy"] == row["val_accuracy"] and best.metrics["val_split"] == "PublicTest"
    assert best.metrics["params"] == sum(p.numel() for p in best.build_model().parameters())


def test_resume_with_a_lost_best_pt_says_so_and_the_next_validated_epoch_writes_one(synthetic_csv, tmp_path,
                                                                                      monkeypatch, capsys):
    from fer_edge.training import trainer as trainer_mod

    real = trainer_mod.classification_metrics
    calls = {"n": 0}

    def first_epoch_best(*a, **k):  # epoch 1 is the best; later epochs are worse
        calls["n"] += 1
        m = real(*a, **k)
        return m if calls["n"] == 1 else {**m, "accuracy": 0.0}

    out = tmp_path / "r"
    orig = trainer_mod.Trainer._write_history

    def stop_after_two(self, history):
        orig(self, history)
        if len(history) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod, "classification_metrics", first_epoch_best)
    monkeypatch.setattr(trainer_mod.Trainer, "_write_history", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(synthetic_csv, out, epochs=3), progress=False)
    monkeypatch.undo()
    assert load_checkpoint(out / "last.pt").raw["resume"]["best_epoch"] == 1
    (out / "best.pt").unlink()
    capsys.readouterr()
    res = train(_cfg(synthetic_csv, out, epochs=3), resume=True, progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert "the weights of the best epoch 1" in err and "are lost" in err and "writes a new best.pt" in err, err
    assert res.best_epoch == 3 and load_checkpoint(out / "best.pt").epoch == 3
    # resuming the finished run again says its best is epoch 3's, in best.pt; with best.pt broken, that it is lost
    train(_cfg(synthetic_csv, out, epochs=3), resume=True, progress=False)
    assert "in " + str(out / "best.pt") in " ".join(capsys.readouterr().err.split())
    (out / "best.pt").write_bytes(b"junk")
    train(_cfg(synthetic_csv, out, epochs=3), resume=True, progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert "written again from" in err and load_checkpoint(out / "best.pt").epoch == 3, err  # epoch 3 is last.pt's


def test_an_interrupt_while_an_epoch_is_saved_waits_for_its_last_pt(synthetic_csv, tmp_path, monkeypatch, capsys):
    """Ctrl-C landing after best.pt but before last.pt left a run with nothing to resume and a message saying
    no epoch had finished; the epoch's files are now written together."""
    import signal

    from fer_edge.training.trainer import Trainer

    orig = Trainer._write_eval_outputs

    def ctrl_c_while_plotting(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # a handler that raises would do so here
            pass
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_write_eval_outputs", ctrl_c_while_plotting)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(synthetic_csv, tmp_path / "r", epochs=3), progress=False)
    assert load_checkpoint(tmp_path / "r" / "last.pt").raw["epoch"] == 1
    assert "last finished epoch is in" in " ".join(capsys.readouterr().err.split())
    monkeypatch.undo()
    assert train(_cfg(synthetic_csv, tmp_path / "r", epochs=3), resume=True, progress=False).epochs_run == 3


@pytest.mark.parametrize("epochs", [1, 2, 4, 80])
def test_one_step_epochs_train_under_every_scheduler_length(synthetic_csv, tmp_path, epochs):
    # with one step an epoch, a one-epoch warm-up is a one-step warm-up: OneCycleLR divided 0 by 0 there
    res = train(_cfg(synthetic_csv, tmp_path / "run", epochs=epochs, max_steps_per_epoch=1, val_every=epochs),
                progress=False)
    assert res.epochs_run == epochs


def test_bad_options_are_all_reported(synthetic_csv, tmp_path):
    with pytest.raises(TrainingError) as e:
        train(_cfg(synthetic_csv, tmp_path / "x", optimizer="lion", label_smoothing=2.0, lr=-1), progress=False)
    msg = str(e.value)
    assert "--optimizer" in msg and "--label-smoothing" in msg and "--lr" in msg


def test_folder_data_and_class_weights_and_distillation(synthetic_folder, synthetic_csv, tmp_path):
    teacher = train(_cfg(synthetic_csv, tmp_path / "t", epochs=1), progress=False)
    res = train(_cfg(synthetic_folder, tmp_path / "s", epochs=1, class_weights="balanced", label_smoothing=0.1,
                     distill=[str(teacher.out_dir / "best.pt")], cutmix=1.0, augment="strong"), progress=False)
    ck = load_checkpoint(res.out_dir / "best.pt")
    assert ck.data["val"]["split"] == "val" and ck.train_config["distill"][0].endswith("best.pt")


def test_config_from_before_teacher_ensembles_loads():
    assert TrainConfig.from_dict({"data": "d", "distill": "t.pt"}).distill == ["t.pt"]
    assert TrainConfig.from_dict({"data": "d", "distill": None}).distill == []


def test_teacher_probs_average_teachers_and_flips():
    from fer_edge.preprocess import Normalization
    from fer_edge.training.teachers import TorchTeacher, teacher_probs

    class Column(torch.nn.Module):  # logits from the left or right image column: flip-sensitive
        def __init__(self, col):
            super().__init__()
            self.col = col

        def forward(self, x):
            return x[:, 0, :, self.col].mean(1, keepdim=True) * torch.arange(7.0)

    x = torch.zeros(2, 1, 48, 48)
    x[..., 0] = 1.0  # bright left column
    x[1, ..., 0] = 0.5  # the two images differ: a mix-up of batch rows would show
    ident = Normalization(0.0, 1.0)
    left, right = TorchTeacher(Column(0), ident), TorchTeacher(Column(-1), ident)
    p_left = teacher_probs([left], x, 1.0, tta=False)
    p_right = teacher_probs([right], x, 1.0, tta=False)
    assert torch.allclose(p_left.sum(1), torch.ones(2)) and not torch.allclose(p_left, p_right)
    assert not torch.allclose(p_left[0], p_left[1])
    assert torch.allclose(teacher_probs([left, right], x, 1.0, tta=False), (p_left + p_right) / 2)
    assert torch.allclose(teacher_probs([left], x, 1.0, tta=True), (p_left + p_right) / 2)


@pytest.mark.parametrize("model_name", ["simple_cnn", "fer_nano"])
def test_onnxruntime_teacher_matches_torch_teacher(model_name):
    from fer_edge.models import create_model
    from fer_edge.preprocess import Normalization
    from fer_edge.training.teachers import OnnxRuntimeTeacher, TorchTeacher, teacher_probs

    torch.manual_seed(0)
    model = create_model(model_name).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the export must carry them
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    norm = Normalization(0.5, 0.25)
    x = torch.rand(5, 1, 48, 48)
    ref = TorchTeacher(model, norm, channels_last=True)
    ort_teacher = OnnxRuntimeTeacher(model, norm, threads=1)
    want = teacher_probs([ref], x, 4.0, tta=True)
    got = teacher_probs([ort_teacher], x, 4.0, tta=True)
    assert got.shape == (5, 7) and torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(ort_teacher.logits((x - 0.5) / 0.25), model((x - 0.5) / 0.25), atol=1e-4)


def test_teacher_runtime_resolution(monkeypatch):
    import sys

    from fer_edge.training.teachers import resolve_teacher_runtime

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_teacher_runtime("auto", cpu) == "onnxruntime"
    assert resolve_teacher_runtime("auto", cuda) == "torch"
    assert resolve_teacher_runtime("torch", cpu) == "torch"
    assert resolve_teacher_runtime("onnxruntime", cpu) == "onnxruntime"
    with pytest.raises(TrainingError, match="on the CPU.*use --teacher-runtime torch"):
        resolve_teacher_runtime("onnxruntime", cuda)
    with pytest.raises(TrainingError, match="valid: auto, torch, onnxruntime"):
        resolve_teacher_runtime("ort", cpu)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert resolve_teacher_runtime("auto", cpu) == "torch"
    with pytest.raises(TrainingError, match="onnxruntime is not installed"):
        resolve_teacher_runtime("onnxruntime", cpu)


def test_distillation_trains_alike_with_either_teacher_runtime(synthetic_csv, tmp_path, capsys):
    base = train(_cfg(synthetic_csv, tmp_path / "teacher", epochs=1, max_steps_per_epoch=3), progress=False)
    teacher = str(base.out_dir / "best.pt")
    weights = {}
    for runtime in ("torch", "onnxruntime"):
        res = train(_cfg(synthetic_csv, tmp_path / runtime, epochs=1, max_steps_per_epoch=3, amp="off",
                         distill=[teacher], distill_tta=True, distill_alpha=0.9, teacher_runtime=runtime),
                    progress=False)
        ck = load_checkpoint(res.out_dir / "last.pt")
        assert ck.train_config["teacher_runtime"] == runtime
        weights[runtime] = ck.state_dict
        assert f"1 teacher(s) in {runtime}" in capsys.readouterr().err
    w_t, w_o = weights["torch"], weights["onnxruntime"]
    assert all(torch.allclose(w_t[k].float(), w_o[k].float(), atol=1e-4) for k in w_t)
    with pytest.raises(TrainingError, match="--teacher-runtime 'ort'"):
        train(_cfg(synthetic_csv, tmp_path / "bad", distill=[teacher], teacher_runtime="ort"), progress=False)


def test_offline_targets_train_like_online_ones_on_unaugmented_images(synthetic_csv, tmp_path, capsys):
    """Without augmentation or mixing the online teacher sees exactly the images offline targets were made from."""
    base = train(_cfg(synthetic_csv, tmp_path / "teacher", epochs=1, max_steps_per_epoch=3), progress=False)
    teacher = str(base.out_dir / "best.pt")
    weights = {}
    for targets in ("online", "offline"):
        res = train(_cfg(synthetic_csv, tmp_path / targets, epochs=1, max_steps_per_epoch=3, amp="off", augment="none",
                         distill=[teacher], distill_tta=True, distill_alpha=0.9, teacher_runtime="torch",
                         distill_targets=targets), progress=False)
        ck = load_checkpoint(res.out_dir / "last.pt")
        assert ck.train_config["distill_targets"] == targets
        weights[targets] = ck.state_dict
        said = "offline distillation targets: the teacher(s) saw each image and its mirror image once" in " ".join(
            capsys.readouterr().err.split())
        assert said == (targets == "offline")
    w_on, w_off = weights["online"], weights["offline"]
    assert all(torch.allclose(w_on[k].float(), w_off[k].float(), atol=1e-5) for k in w_on)
    # with MixUp the looked-up targets are mixed like the labels (a smoke run of that path)
    res = train(_cfg(synthetic_csv, tmp_path / "mix", epochs=1, max_steps_per_epoch=2, mixup=0.4, cutmix=1.0,
                     distill=[teacher], distill_targets="offline"), progress=False)
    assert res.history[-1]["train_loss"] > 0
    for bad, msg in ((dict(distill_targets="offline"), "needs at least one --distill teacher"),
                     (dict(distill=[teacher], distill_targets="cached"), "valid: online, offline")):
        with pytest.raises(TrainingError, match=msg):
            train(_cfg(synthetic_csv, tmp_path / "bad", **bad), progress=False)


def test_precomputed_teacher_probs_are_teacher_probs_of_the_clean_images():
    from fer_edge.preprocess import Normalization
    from fer_edge.training.teachers import TorchTeacher, precompute_teacher_probs, teacher_probs

    torch.manual_seed(0)
    teacher = TorchTeacher(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 7)).eval(),
                           Normalization(0.5, 0.25))
    images = torch.randint(0, 256, (10, 48, 48), dtype=torch.uint8)
    seen = []
    got = precompute_teacher_probs([teacher], images, 2.0, tta=True, batch_size=4, on_batch=seen.append)
    want = teacher_probs([teacher], images.unsqueeze(1).float() / 255.0, 2.0, tta=True)
    assert seen == [4, 4, 2] and got.shape == (10, 7) and torch.allclose(got, want, atol=1e-6)
    # under torchrun each of 3 processes labels every third image; the all-reduced sum is every image once
    shares = [precompute_teacher_probs([teacher], images, 2.0, tta=True, batch_size=2, rank=r, world=3)
              for r in range(3)]
    for r, share in enumerate(shares):
        labelled = share.abs().sum(1) > 0
        assert labelled.tolist() == [i % 3 == r for i in range(10)]
    assert torch.allclose(sum(shares), want, atol=1e-6)
    few = [precompute_teacher_probs([teacher], images[:2], 2.0, tta=False, rank=r, world=3) for r in range(3)]
    assert [f.shape for f in few] == [(2, 7)] * 3 and not few[2].any()  # a process with no share adds zeros
    with pytest.raises(TrainingError, match="rank 3 is not one of a world of 3"):
        precompute_teacher_probs([teacher], images, 2.0, tta=False, rank=3, world=3)


def test_distill_speed_benchmark_compares_runtimes(synthetic_csv, tiny_checkpoint, tmp_path):
    from fer_edge.benchmarks.distill_speed import cli

    args = ["--data", str(synthetic_csv), "--student", "simple_cnn", "--steps", "2", "--rounds", "2",
            "--batch-size", "16", "--threads", "1", "--amp", "off"]
    r = runner.invoke(cli, [*args, "--teacher", str(tiny_checkpoint)], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    for row in ("no teacher", "teacher in torch", "teacher in onnxruntime", "offline targets (onnxruntime)",
                "replay targets (onnxruntime)", "round 2/2", "epoch of 280 images"):
        assert row in r.output
    assert "median of 2" in r.output and "(median ratio):" in r.output
    assert "offline targets vs ONNX Runtime teacher" in r.output and "labelling: offline" in r.output
    assert "replay targets vs ONNX Runtime teacher" in r.output and "labelling 2 views of each took" in r.output
    r = runner.invoke(cli, [*args, "--teacher", str(tmp_path / "missing.pt")])
    assert r.exit_code == 1 and "no such checkpoint" in " ".join(r.output.split())  # rich wraps long paths


def test_step_cost_benchmark_counts_operators_per_step(synthetic_csv):
    from fer_edge.benchmarks.step_cost import cli, step_counts

    no_ema = step_counts(str(synthetic_csv), "simple_cnn", "cpu", 16, "off", steps=(1, 3), num_threads=1)
    with_ema = step_counts(str(synthetic_csv), "simple_cnn", "cpu", 16, "off", steps=(1, 3), num_threads=1,
                           ema=0.99)
    assert no_ema["kernels_per_step"] is None  # not a CUDA device
    # a step runs the model's forward and backward (dozens of operators); EMA adds its few foreach calls
    assert 20 < no_ema["ops_per_step"] < with_ema["ops_per_step"] < no_ema["ops_per_step"] + 10
    r = runner.invoke(cli, ["--data", str(synthetic_csv), "--model", "simple_cnn", "--batch-size", "8",
                            "--batch-size", "16", "--steps", "2", "--rounds", "2", "--device", "cpu",
                            "--amp", "off", "--threads", "1"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert "round 2/2" in r.output and "vs batch 8" in r.output and "1.00x" in r.output
    assert "not measured, this device is not a CUDA GPU" in r.output


def test_init_fine_tunes_from_checkpoint_and_rejects_misfits(synthetic_csv, tmp_path):
    base = train(_cfg(synthetic_csv, tmp_path / "base", epochs=2), progress=False)
    base_ck = load_checkpoint(base.out_dir / "best.pt")
    # one step at a tiny learning rate: the fine-tuned weights stay next to the initial ones
    tuned = train(_cfg(synthetic_csv, tmp_path / "ft", epochs=1, max_steps_per_epoch=1, lr=1e-7,
                       init=str(base.out_dir / "best.pt"),
                       distill=[str(base.out_dir / "best.pt"), str(base.out_dir / "last.pt")],
                       distill_tta=True), progress=False)
    ck = load_checkpoint(tuned.out_dir / "best.pt")
    w0, w1 = base_ck.state_dict, ck.state_dict
    close = [k for k in w0 if w0[k].is_floating_point() and torch.allclose(w0[k], w1[k], atol=1e-3)]
    assert len(close) >= 0.9 * sum(v.is_floating_point() for v in w0.values())
    assert ck.normalization == base_ck.normalization and ck.train_config["init"].endswith("best.pt")
    with pytest.raises(TrainingError) as e:
        train(_cfg(synthetic_csv, tmp_path / "bad", model="custom_cnn", init=str(base.out_dir / "best.pt")),
              progress=False)
    assert "--init" in str(e.value) and "'simple_cnn'" in str(e.value)
    with pytest.raises(TrainingError) as e:
        train(_cfg(synthetic_csv, tmp_path / "bad2", model_kwargs={"hidden": 64},
                   init=str(base.out_dir / "best.pt")), progress=False)
    assert "do not fit" in str(e.value) and '{"hidden": 64}' in str(e.value)
    with pytest.raises(TrainingError) as e:
        train(_cfg(synthetic_csv, tmp_path / "bad3", distill_tta=True, distill_alpha=2.0), progress=False)
    assert "--distill-tta" in str(e.value) and "--distill-alpha" in str(e.value)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_augment_keeps_shape_and_range(preset):
    torch.manual_seed(0)
    x = torch.rand(16, 1, 48, 48)
    y = augment_batch(x, PRESETS[preset])
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    if PRESETS[preset] is None:
        assert torch.equal(x, y)
    else:
        assert not torch.equal(x, y)


def test_mix_batch_label_weights():
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 48, 48), torch.arange(8) % 7
    xm, ya, yb, lam, perm = mix_batch(x, y, mixup=0.4, cutmix=0.0)
    assert xm.shape == x.shape and 0 <= lam <= 1 and torch.equal(ya, y) and sorted(yb.tolist()) == sorted(y.tolist())
    assert torch.equal(yb, y[perm]) and torch.allclose(xm, lam * x + (1 - lam) * x[perm])
    _, _, _, lam0, perm0 = mix_batch(x, y, 0, 0)
    assert lam0 == 1.0 and torch.equal(perm0, torch.arange(8))
    xc, _, yc, lamc, permc = mix_batch(x, y, mixup=0.0, cutmix=1.0)
    assert torch.equal(yc, y[permc]) and 0 <= lamc <= 1


def test_mix_batch_prob_mixes_that_share_of_batches():
    x, y = torch.rand(8, 1, 48, 48), torch.arange(8) % 7
    torch.manual_seed(0)
    mixed = [mix_batch(x, y, mixup=0.0, cutmix=1.0, prob=0.3)[3] < 1.0 for _ in range(400)]
    assert 0.22 < sum(mixed) / len(mixed) < 0.38  # ~0.3; an unmixed batch comes back as it was
    xs, _, ys, lam, perm = mix_batch(x, y, mixup=0.4, cutmix=1.0, prob=0.0)
    assert lam == 1.0 and xs is x and torch.equal(perm, torch.arange(8))
    # prob 1.0 draws no extra random number: the same stream as before the option existed
    torch.manual_seed(1)
    a = mix_batch(x, y, mixup=0.4, cutmix=0.0)
    torch.manual_seed(1)
    b = mix_batch(x, y, mixup=0.4, cutmix=0.0, prob=1.0)
    assert a[3] == b[3] and torch.equal(a[4], b[4]) and torch.equal(a[0], b[0])


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_mix_prob_outside_zero_one_is_refused(synthetic_csv, tmp_path, bad):
    with pytest.raises(TrainingError, match="--mix-prob"):
        train(_cfg(synthetic_csv, tmp_path / "bad", epochs=1, cutmix=1.0, mix_prob=bad), progress=False)


def test_cli_train_then_eval(synthetic_csv, tmp_path):
    out = tmp_path / "cli"
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--out", str(out),
                            "--epochs", "1", "--batch-size", "32", "--max-steps-per-epoch", "3", "--device", "cpu",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (out / "best.pt").is_file()
    r = runner.invoke(app, ["eval", "--checkpoint", str(out / "best.pt"), "--data", str(synthetic_csv),
                            "--split", "PublicTest", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["n"] == 84 and 0 <= res["accuracy"] <= 1 and {"macro_f1", "per_class"} <= set(res)
    assert len(list(out.glob("confusion_best-*_fer2013-*_PublicTest.png"))) == 1
    r = runner.invoke(app, ["eval", "--checkpoint", str(out / "best.pt"), "--data", str(synthetic_csv), "--tta"])
    assert r.exit_code == 0 and "accuracy" in r.output
    # fine-tune the run with a two-teacher, flip-TTA distillation: the options reach the saved config
    best, last = str(out / "best.pt"), str(out / "last.pt")  # two files: a teacher given twice is refused
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--out", str(tmp_path / "ft"),
                            "--epochs", "1", "--batch-size", "32", "--max-steps-per-epoch", "2", "--device", "cpu",
                            "--init", best, "--distill", best, "--distill", last, "--distill-tta",
                            "--distill-alpha", "0.7", "--distill-temperature", "2",
                            "--teacher-runtime", "torch", "--no-progress"])
    assert r.exit_code == 0, r.output
    cfg = load_checkpoint(tmp_path / "ft" / "best.pt").train_config
    assert cfg["init"] == best and cfg["distill"] == [best, last] and cfg["distill_tta"] is True
    assert (cfg["distill_alpha"], cfg["distill_temperature"]) == (0.7, 2.0)
    assert cfg["teacher_runtime"] == "torch" and "2 teacher(s) in torch" in r.output
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--out", str(tmp_path / "off"),
                            "--epochs", "1", "--batch-size", "32", "--max-steps-per-epoch", "2", "--device", "cpu",
                            "--distill", best, "--distill-targets", "offline", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(tmp_path / "off" / "best.pt").train_config["distill_targets"] == "offline"
    assert "offline distillation targets" in r.output


def test_cli_errors_are_clear(synthetic_csv, tmp_path):
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--model", "no_such_net", "--out",
                            str(tmp_path / "x"), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 2 and "unknown model 'no_such_net'" in r.output  # a usage error, as --optimizer lion
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--optimizer", "lion"])
    assert r.exit_code == 2 and "lion" in r.output
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--teacher-runtime", "ort"])
    assert r.exit_code == 2 and "'ort' is not one of" in r.output and "onnxruntime" in r.output
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--distill-targets", "cached"])
    assert r.exit_code == 2 and "'cached' is not one of" in r.output and "offline" in r.output
    r = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(synthetic_csv)])
    assert r.exit_code == 1 and "missing.pt" in r.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = runner.invoke(app, ["eval", "--checkpoint", str(bad), "--data", str(synthetic_csv)])
    assert r.exit_code == 1 and "not a readable checkpoint" in r.output


def test_ema_updater_matches_averaged_model_with_the_warm_up_decay():
    """EmaUpdater is AveragedModel.update_parameters with a multi_avg_fn, minus the per-step device reads."""
    from torch.optim.swa_utils import AveragedModel

    from fer_edge.models import create_model
    from fer_edge.training.trainer import EmaUpdater, ema_decay

    def reference_fn(ema_params, params, num_averaged):
        d = ema_decay(0.99, int(num_averaged))
        for e, p in zip(ema_params, params):
            e.copy_(torch.lerp(e, p, 1 - d) if e.is_floating_point() else p)

    torch.manual_seed(0)
    model = create_model("fer_nano")
    ref = AveragedModel(model, multi_avg_fn=reference_fn, use_buffers=True)
    fast = AveragedModel(model, use_buffers=True)
    updater = EmaUpdater(fast, model, 0.99)
    for step in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        model.train()(torch.randn(4, 1, 48, 48))  # moves the BatchNorm statistics and num_batches_tracked
        with torch.no_grad():
            ref.update_parameters(model)
        updater.update()
    for (k, a), b in zip(ref.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    assert int(fast.n_averaged) == 30 and updater.n == 30
    # the ramp: the second update averages with decay 2/11, not 0.99; the decay then reaches its cap
    assert ema_decay(0.99, 1) == 2 / 11 and ema_decay(0.99, 10_000) == 0.99
    # a resumed run picks up the count from the state dict
    resumed = AveragedModel(model, use_buffers=True)
    resumed.load_state_dict(fast.state_dict())
    assert EmaUpdater(resumed, model, 0.99).n == 30


def test_wandb_offline_logging(synthetic_csv, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is optional: pip install 'fer-edge[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "wb"
    train(_cfg(synthetic_csv, out, epochs=1, wandb="fer-edge-test"), progress=False)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())


@pytest.mark.parametrize("qat", [False, True], ids=["fp32", "qat"])
def test_torchrun_trains_with_ddp(synthetic_csv, tmp_path, qat):
    """Under torchrun (2 CPU processes, gloo) the same command trains with DistributedDataParallel."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29533 + qat),
           "-m", "fer_edge", "train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--out", str(out),
           "--epochs", "2", "--batch-size", "32", "--max-steps-per-epoch", "3", "--device", "cpu", "--no-progress"]
    r = subprocess.run(cmd + (["--qat"] if qat else []), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("best val accuracy") == 2  # both ranks finished
    rows = list(csv.DictReader((out / "history.csv").open()))
    last = load_checkpoint(out / "last.pt")
    assert len(rows) == 2 and last.epoch == 2
    resume = last.raw["resume"]
    assert last.train_config["qat"] is qat and (resume["qat"] is not None) is qat
    if qat:  # the observers' ranges (averaged over the ranks every step) travel for --resume
        ranges = [float(v) for s in resume["qat"].values() for k, v in s.items() if k.endswith("_val")]
        assert ranges and all(np.isfinite(ranges))


@pytest.mark.parametrize("targets", ["offline", "replay"])
def test_torchrun_shares_the_labelling_of_stored_teacher_targets(targets, synthetic_csv, tmp_path):
    """Under torchrun each process labels half the images (of every view, for replay); the sum is all of them."""
    import subprocess
    import sys

    teacher = train(_cfg(synthetic_csv, tmp_path / "teacher", epochs=1, max_steps_per_epoch=3), progress=False)
    out = tmp_path / f"ddp_{targets}"
    port = "29537" if targets == "offline" else "29538"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           "-m", "fer_edge", "train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--out", str(out),
           "--epochs", "1", "--batch-size", "32", "--max-steps-per-epoch", "3", "--device", "cpu", "--no-progress",
           "--distill", str(teacher.out_dir / "best.pt"), "--distill-targets", targets, "--teacher-runtime", "torch"]
    if targets == "replay":
        cmd += ["--distill-views", "2", "--distill-cache", str(tmp_path / "cache.pt")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    said = " ".join(r.stderr.split())
    assert said.count(f"{targets} distillation targets") == 1 and "images, shared by 2 processes" in said
    assert load_checkpoint(out / "last.pt").train_config["distill_targets"] == targets
    if targets == "replay":  # the pooled targets: every image of every view labelled, once
        raw = torch.load(tmp_path / "cache.pt", weights_only=True)
        assert raw["probs"].shape[0] == 2 and torch.allclose(raw["probs"].sum(-1), torch.ones(2, raw["probs"].shape[1]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_with_fp16_autocast(synthetic_csv, tmp_path):
    res = train(_cfg(synthetic_csv, tmp_path / "gpu", epochs=2, device="cuda"), progress=False)
    ck = load_checkpoint(res.out_dir / "best.pt")
    assert ck.train_config["device"] == "cuda" and res.best_accuracy > 1 / 7
    # saved on the CPU, so a machine without a GPU opens them with a plain torch.load
    for name in ("best.pt", "last.pt"):
        raw = torch.load(res.out_dir / name, weights_only=True)
        devices = {t.device.type for t in _tensors(raw)}
        assert devices == {"cpu"}, (name, devices)


def test_checkpoint_tensors_are_saved_detached_with_their_nesting(tmp_path):
    from fer_edge.checkpoint import save_checkpoint

    w = torch.ones(2, requires_grad=True)
    payload = {"model": "simple_cnn", "labels": ["a"], "normalization": {"mean": 0.5, "std": 0.25},
               "state_dict": {"w": w * 2}, "resume": {"state": [(torch.zeros(1), 3)], "n": 1}}
    raw = torch.load(save_checkpoint(tmp_path / "c.pt", payload), weights_only=True)
    assert not raw["state_dict"]["w"].requires_grad and raw["state_dict"]["w"].tolist() == [2.0, 2.0]
    assert isinstance(raw["resume"]["state"][0], tuple) and raw["resume"]["state"][0][1] == 3


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_early_stopping_on_validation_accuracy(synthetic_csv, tmp_path):
    # a learning rate too small to change anything: validation accuracy cannot improve after epoch 1
    res = train(_cfg(synthetic_csv, tmp_path / "es", epochs=6, lr=1e-12, patience=2), progress=False)
    assert res.stopped_early and res.epochs_run == 3 and res.best_epoch == 1
    assert load_checkpoint(tmp_path / "es" / "last.pt").epoch == 3


def test_sigterm_handler_installed_outside_python_is_replaced_by_the_default(monkeypatch):
    import signal

    import fer_edge.utils as utils

    calls = []
    real = signal.signal

    def fake_signal(signum, handler):
        calls.append(handler)
        previous = real(signum, handler)
        return None if len(calls) == 1 else previous  # as if a C extension had set the first handler

    monkeypatch.setattr(utils.signal, "signal", fake_signal)
    before = signal.getsignal(signal.SIGTERM)
    try:
        with utils.sigterm_as_interrupt():
            pass
        assert calls[-1] is signal.SIG_DFL
    finally:
        real(signal.SIGTERM, before)


@pytest.mark.parametrize("bad, words", [
    ({"lr": float("nan")}, "--lr must be a finite number"),
    ({"lr": float("inf")}, "--lr must be a finite number"),
    ({"mixup": float("nan"), "weight_decay": float("inf")}, "--mixup must be a finite number"),
    ({"weight_decay": -1.0}, "--weight-decay must be >= 0"),
    ({"warmup_epochs": -3.0}, "--warmup-epochs must be >= 0"),
    ({"model_kwargs": [1, 2]}, "--model-kwargs takes a JSON object"),
    ({"model_kwargs": {"num_classes": 3}}, "--model-kwargs cannot set num_classes: FER2013 has 7 classes"),
    ({"distill_alpha": 0.7}, "--distill-alpha applies to distillation only"),
    ({"distill_temperature": 2.0}, "--distill-temperature applies to distillation only"),
    ({"teacher_runtime": "torch"}, "--teacher-runtime torch applies to distillation only"),
])
def test_non_finite_negative_and_orphan_options_are_refused_before_any_work(synthetic_csv, tmp_path, bad, words):
    with pytest.raises(TrainingError, match=words):
        train(_cfg(synthetic_csv, tmp_path / "x", **bad), progress=False)
    assert not (tmp_path / "x").exists()


def test_non_finite_numbers_an_unknown_model_and_bad_ranges_are_reported_together(synthetic_csv, tmp_path):
    with pytest.raises(TrainingError) as e:
        train(_cfg(synthetic_csv, tmp_path / "x", lr=float("nan"), weight_decay=-1.0, model="nosuch",
                   label_smoothing=2.0), progress=False)
    msg = str(e.value)
    for words in ("--lr must be a finite number", "--weight-decay must be >= 0", "--model: unknown model 'nosuch'",
                  "--label-smoothing must be in [0, 1)"):
        assert words in msg, msg
    assert "--lr must be positive" not in msg  # a refused number is not judged again
    with pytest.raises(TrainingError) as e:  # named by their options, as typed
        train(_cfg(synthetic_csv, tmp_path / "x", num_threads=-1, max_steps_per_epoch=-2), progress=False)
    assert "--threads must be at least 0, got -1" in str(e.value)
    assert "--max-steps-per-epoch must be at least 0, got -2" in str(e.value)
    assert not (tmp_path / "x").exists()


def test_cli_refuses_a_model_kwargs_list_and_a_file_as_out(synthetic_csv, tmp_path):
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--out",
                            str(tmp_path / "r"), "--model-kwargs", "[1, 2]"])
    assert r.exit_code == 2 and "--model-kwargs takes a JSON object" in r.stderr and "Traceback" not in r.output
    (tmp_path / "afile").write_text("x")
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--epochs", "1",
                            "--out", str(tmp_path / "afile" / "run")])
    assert r.exit_code == 1 and "which is a file, not a folder" in " ".join(r.stderr.split())


@pytest.mark.parametrize("args, words", [
    (["--distill-alpha", "0.5"], "--distill-alpha applies to distillation only"),  # its default value, given
    (["--distill-temperature", "4"], "--distill-temperature applies to distillation only"),
    (["--distill-alpha", "0.5", "--distill-temperature", "4"],
     ["--distill-alpha applies to distillation only", "--distill-temperature applies to distillation only"]),
    # in the one list of every bad option, not an error of its own that hides the others
    (["--distill-alpha", "0.5", "--lr", "-1", "--label-smoothing", "1"],
     ["--distill-alpha applies to distillation only", "--lr must be positive", "--label-smoothing must be in"]),
])
def test_cli_refuses_distillation_options_without_a_teacher_even_at_their_defaults(synthetic_csv, tmp_path, args,
                                                                                   words):
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--out",
                            str(tmp_path / "r"), *args])
    err = " ".join(r.stderr.split())
    assert r.exit_code == 2 and "bad training options" in err, r.output  # a usage error
    for w in [words] if isinstance(words, str) else words:
        assert w in err, r.output
        assert err.count(w) == 1, err  # said once, not again by the config's own default check
    assert not (tmp_path / "r").exists()


def test_a_diverging_run_stops_with_an_error_and_saves_nothing(synthetic_csv, tmp_path):
    out = tmp_path / "boom"
    with pytest.raises(TrainingError, match="training diverged: the training loss of epoch 1 is nan; nothing was saved"):
        train(_cfg(synthetic_csv, out, epochs=2, optimizer="sgd", lr=1e12, amp="off"), progress=False)
    assert not out.exists()  # no empty run folder left behind


def test_resuming_a_finished_or_early_stopped_run_changes_nothing(synthetic_csv, tmp_path):
    for name, kw in (("done", dict(epochs=1)), ("early", dict(epochs=6, lr=1e-12, patience=1))):
        cfg = _cfg(synthetic_csv, tmp_path / name, max_steps_per_epoch=1, **kw)
        first = train(cfg, progress=False)
        before = {p.name: p.read_bytes() for p in (tmp_path / name).iterdir() if p.is_file()}
        again = train(cfg, resume=True, progress=False)
        after = {p.name: p.read_bytes() for p in (tmp_path / name).iterdir() if p.is_file()}
        assert after == before, name  # no epoch trained, nothing rewritten
        assert (again.epochs_run, again.best_epoch, again.stopped_early) == \
               (first.epochs_run, first.best_epoch, first.stopped_early)


def test_init_and_distill_take_shipped_names(synthetic_csv, tmp_path):
    from fer_edge.weights import resolve_checkpoint

    res = train(_cfg(synthetic_csv, tmp_path / "ft", model="fer_nano", init="nano", distill=["nano"],
                     teacher_runtime="torch", max_steps_per_epoch=1, amp="off"), progress=False)
    cfg = load_checkpoint(res.out_dir / "best.pt").train_config
    assert cfg["init"] == cfg["distill"][0] == str(resolve_checkpoint("nano"))  # the file the name stood for
    with pytest.raises(FerEdgeError, match="no such checkpoint file or shipped model"):
        train(_cfg(synthetic_csv, tmp_path / "x", model="fer_nano", init="nanoo"), progress=False)


def test_setup_warnings_name_what_is_probably_a_mistake():
    from types import SimpleNamespace

    from fer_edge.training.trainer import setup_warnings

    cfg = TrainConfig(data="d", amp="fp16")
    train_split = SimpleNamespace(split="Training", labels=torch.tensor([0, 3, 4, 6]))
    got = setup_warnings(cfg, train_split, SimpleNamespace(split="Training"), torch.device("cpu"))
    assert len(got) == 3
    assert "the validation split is the training split (Training)" in got[0]
    assert "no disgust, fear, surprise images" in got[1]
    assert "--amp fp16 on the CPU" in got[2]
    full = SimpleNamespace(split="Training", labels=torch.arange(7))
    assert setup_warnings(TrainConfig(data="d"), full, SimpleNamespace(split="PublicTest"), torch.device("cpu")) == []


def test_a_wandb_that_does_not_start_is_an_error_and_leaves_no_run_folder(synthetic_csv, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb is optional: pip install 'fer-edge[wandb]'")

    def refuse(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(TrainingError, match="Weights & Biases did not start .*UsageError.*wandb login"):
        train(_cfg(synthetic_csv, tmp_path / "w", wandb="proj"), progress=False)
    assert not (tmp_path / "w").exists()


def test_benchmark_scripts_report_user_errors_without_a_traceback(synthetic_csv):
    from fer_edge.benchmarks.step_cost import cli

    r = runner.invoke(cli, ["--data", str(synthetic_csv), "--model", "nosuch"])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "unknown model 'nosuch'" in r.stderr
    assert r.exception.__class__ is SystemExit and "Traceback" not in r.output


def test_eval_refuses_a_file_as_out_before_evaluating(synthetic_csv, tmp_path, tiny_checkpoint):
    (tmp_path / "afile").write_text("x")
    r = runner.invoke(app, ["eval", "--model", str(tiny_checkpoint), "--data", str(synthetic_csv), "--out",
                            str(tmp_path / "afile")])
    assert r.exit_code == 1 and "is a file, not a folder" in " ".join(r.stderr.split()) and "accuracy" not in r.stdout


def test_the_cli_reports_a_file_system_refusal_as_an_error_not_a_traceback(capsys):
    import typer

    from fer_edge.cli.common import handle_errors

    @handle_errors
    def writes():
        raise PermissionError(13, "Permission denied", "/root/out/report.json")

    with pytest.raises(typer.Exit) as e:
        writes()
    assert e.value.exit_code == 1
    assert capsys.readouterr().err.strip() == "error: /root/out/report.json: Permission denied"


def test_a_folder_as_init_or_teacher_is_refused_before_the_data_loads(synthetic_csv, tmp_path):
    for opt in ({"init": str(tmp_path)}, {"distill": [str(tmp_path)]}):
        with pytest.raises(TrainingError, match="a folder, not a checkpoint file"):
            train(_cfg(synthetic_csv, tmp_path / "x", **opt), progress=False)


# --- distillation inputs on resume, from QA -----------------------------------------------------------------------
def test_resume_refuses_a_teacher_replaced_at_the_same_path(synthetic_csv, tiny_checkpoint, tmp_path, monkeypatch):
    """Epochs after the resume distilled from the other file silently (a shipped small after an upgrade)."""
    import shutil

    teacher = tmp_path / "t.pt"
    shutil.copy(tiny_checkpoint, teacher)
    cfg = _cfg(synthetic_csv, tmp_path / "r", epochs=2, distill=[str(teacher)], model="fer_nano")
    _stopped_after_one_epoch(cfg, monkeypatch)
    raw = torch.load(teacher, weights_only=True)
    raw["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in raw["state_dict"].items()}
    torch.save(raw, teacher)
    with pytest.raises(TrainingError, match=r"--resume: --distill .*t\.pt changed since the run"):
        train(cfg, resume=True, progress=False)
    shutil.copy(tiny_checkpoint, teacher)  # the original back: the run goes on
    assert train(cfg, resume=True, progress=False).epochs_run == 2


def test_a_bad_distill_cache_path_is_refused_before_any_labelling(synthetic_csv, tiny_checkpoint, tmp_path):
    calls = []
    import fer_edge.training.trainer as tr

    orig = tr.Trainer._replay_targets

    def spy(self, *a, **k):
        calls.append(1)
        return orig(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tr.Trainer, "_replay_targets", spy)
        with pytest.raises(TrainingError, match=r"--distill-cache .*lies under|--distill-cache .*is a file"):
            train(_cfg(synthetic_csv, tmp_path / "r", distill=[str(tiny_checkpoint)], distill_targets="replay",
                       distill_cache=str(Path(synthetic_csv) / "cache.pt")), progress=False)
    assert not calls and not (tmp_path / "r").exists()


def test_an_interrupt_while_teachers_label_says_so(synthetic_csv, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import fer_edge.training.trainer as tr

    def stop(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tr.Trainer, "_offline_targets", stop)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(synthetic_csv, tmp_path / "r", distill=[str(tiny_checkpoint)], distill_targets="offline"),
              progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert "interrupted: the teachers were labelling the training images; no epoch ran" in err


@pytest.mark.parametrize("t", [1e-45, 1e300, 0.001])
def test_a_temperature_outside_float32s_range_is_refused_up_front(synthetic_csv, tiny_checkpoint, tmp_path, t):
    """It ran an epoch, then blamed --lr for the NaN loss."""
    with pytest.raises(TrainingError, match=r"--distill-temperature must be in \[0\.01, 100\.0\]"):
        train(_cfg(synthetic_csv, tmp_path / "r", distill=[str(tiny_checkpoint)], distill_temperature=t),
              progress=False)


def test_replay_records_its_views_and_resume_takes_the_default_typed_out(tmp_path):
    from fer_edge.training.trainer import _same_setting, resolve_checkpoint_names

    cfg = resolve_checkpoint_names(TrainConfig(data=str(tmp_path), distill=["nano"], distill_targets="replay",
                                               distill_cache="c/rep.pt"))
    assert cfg.distill_views == 8 and Path(cfg.distill_cache).is_absolute()
    assert _same_setting("distill_views", None, 8) and not _same_setting("distill_views", None, 4)


def test_a_missing_teacher_is_named_as_distill(synthetic_csv, tmp_path):
    with pytest.raises(FerEdgeError, match=r"--distill nope\.pt: .*no such checkpoint file"):
        train(_cfg(synthetic_csv, tmp_path / "r", distill=["nope.pt"]), progress=False)


def test_resume_takes_the_same_data_by_another_path_or_a_copy(synthetic_csv, tmp_path, monkeypatch):
    """The data is compared by its fingerprint: a folder holding the CSV, the CSV itself, or a copy unpacked at
    another path (a GPU machine's /tmp) is the run's data. The run's folder path was refused."""
    import shutil

    (tmp_path / "dir").mkdir()
    shutil.copy(synthetic_csv, tmp_path / "dir" / "fer2013.csv.gz")
    _stopped_after_one_epoch(_cfg(tmp_path / "dir", tmp_path / "r", epochs=2), monkeypatch)
    shutil.copy(synthetic_csv, tmp_path / "copy.csv.gz")
    res = train(_cfg(tmp_path / "copy.csv.gz", tmp_path / "r", epochs=2), resume=True, progress=False)
    assert res.epochs_run == 2


def test_resume_takes_the_runs_split_typed_out_or_by_an_alias_and_refuses_another(synthetic_csv, tmp_path,
                                                                                   monkeypatch):
    _stopped_after_one_epoch(_cfg(synthetic_csv, tmp_path / "other", epochs=3, split="PublicTest"), monkeypatch)
    with pytest.raises(TrainingError, match="--split names split 'Training', the run's was 'PublicTest'"):
        train(_cfg(synthetic_csv, tmp_path / "other", epochs=3), resume=True, progress=False)  # the default
    _stopped_after_one_epoch(_cfg(synthetic_csv, tmp_path / "r", epochs=3), monkeypatch)
    with pytest.raises(TrainingError, match=r"--split was None, now 'PublicTest'.*--epochs was 3, now 4"):
        train(_cfg(synthetic_csv, tmp_path / "r", epochs=4, split="PublicTest"), resume=True, progress=False)
    # the defaults typed out, or by their aliases: the run's splits
    res = train(_cfg(synthetic_csv, tmp_path / "r", epochs=3, split="Training", val_split="val"), resume=True,
                progress=False)
    assert res.epochs_run == 3


def test_resume_on_other_data_blames_the_data_not_the_split_typed(synthetic_csv, synthetic_folder, tmp_path,
                                                                     monkeypatch):
    """A run on the CSV resumed on an image folder said "--split names split 'train', the run's was 'Training'",
    even with --split Training typed (an alias of the folder's train), and never mentioned the data."""
    _stopped_after_one_epoch(_cfg(synthetic_csv, tmp_path / "r", epochs=3), monkeypatch)
    folder = tmp_path / "other"
    from fer_edge.data.synthetic import make_synthetic, write_folder

    write_folder(folder, {"train": make_synthetic(40, seed=7), "val": make_synthetic(12, seed=8)})
    for splits in ({}, {"split": "Training", "val_split": "PublicTest"}):
        with pytest.raises(TrainingError) as e:
            train(_cfg(folder, tmp_path / "r", epochs=3, **splits), resume=True, progress=False)
        msg = str(e.value)
        assert "names split" not in msg, msg
        assert f"of {folder} differ from the data the run in {tmp_path / 'r'} began on ({synthetic_csv})" in msg, msg
    # the run's own images as an image folder (train/val): the same data, so the run goes on
    res = train(_cfg(synthetic_folder, tmp_path / "r", epochs=3), resume=True, progress=False)
    assert res.epochs_run == 3


def test_a_model_with_batchnorm1d_is_refused_a_one_image_step_before_training(synthetic_csv, tmp_path):
    """keras_cnn --batch-size 1 crashed in the first step with BatchNorm1d's 'Expected more than 1 value'."""
    with pytest.raises(TrainingError, match=r"keras_cnn has BatchNorm1d layers, which need at least 2 images a "
                                            r"training step, but a step gets 1 \(--batch-size 1"):
        train(_cfg(synthetic_csv, tmp_path / "r", model="keras_cnn", batch_size=1, epochs=1), progress=False)
    assert not (tmp_path / "r").exists()
    res = train(_cfg(synthetic_csv, tmp_path / "ok", model="simple_cnn", batch_size=1, epochs=1,
                     max_steps_per_epoch=2), progress=False)  # no BatchNorm1d: a one-image step trains
    assert res.epochs_run == 1
    # QA: a one-image training split was told to raise --batch-size, which cannot help
    from fer_edge.data.synthetic import make_synthetic, write_csv

    x, y = make_synthetic(2, seed=3)
    one = write_csv(tmp_path / "one.csv", {"Training": (x[:1], y[:1]), "PublicTest": (x[1:], y[1:])})
    with pytest.raises(TrainingError, match=r"a step gets 1 \(--batch-size 32, 1 training images\): the training "
                                            r"split needs at least 2 images$"):
        train(_cfg(one, tmp_path / "r1", model="keras_cnn", epochs=1), progress=False)


def test_cli_train_names_init_and_refuses_orphan_mix_prob_and_empty_model_kwargs(synthetic_csv, tmp_path):
    base = ["train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--epochs", "1"]
    (tmp_path / "afile").write_text("not a checkpoint")
    for args, words, code in ((["--init", str(tmp_path / "nope.pt")], "error: --init: ", 1),
                              (["--init", str(tmp_path / "afile")], "error: --init: ", 1),
                              (["--mix-prob", "0.3"], "--mix-prob 0.3 applies to mixed batches only: add --mixup "
                                                      "or --cutmix", 2),  # usage errors: exit 2
                              (["--model-kwargs", ""], "--model-kwargs is empty", 2),
                              (["--model-kwargs", "{x"], "--model-kwargs is not valid JSON", 2),
                              (["--lr", "nan", "--ema", "2"], "--lr must be a finite number", 2)):
        r = runner.invoke(app, base + ["--out", str(tmp_path / "r"), *args])
        err = " ".join(r.stderr.split())
        assert r.exit_code == code and words in err, (args, err)
        assert "Traceback" not in r.output, r.output
    for kw, words in (("{x", "--model-kwargs is not valid JSON"), ("", "--model-kwargs is empty")):
        r = runner.invoke(app, base + ["--out", str(tmp_path / "r"), "--model-kwargs", kw, "--lr", "nan",
                                       "--mix-prob", "0.3"])
        err = " ".join(r.stderr.split())
        assert r.exit_code == 2 and "bad training options" in err, err  # one list, not the JSON problem alone
        assert words in err and "--lr must be a finite number" in err and "--mix-prob 0.3 applies" in err, err
    assert not (tmp_path / "r").exists()
    r = runner.invoke(app, base + ["--out", str(tmp_path / "m"), "--mix-prob", "0.3", "--mixup", "0.2",
                                   "--max-steps-per-epoch", "1"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("model, kwargs, words", [
    ("simple_cnn", {"widths": [8] * 7}, "cannot take a 48x48 grayscale image: RuntimeError"),
    ("fer_nano", {"stem": 1}, "cannot take a 48x48 grayscale image"),
    ("cbam_cnn", {"reduction": 0}, "reduction must be a whole number of at least 1"),
])
def test_model_kwargs_that_cannot_train_are_refused_with_the_other_options(synthetic_csv, tmp_path, model, kwargs,
                                                                           words):
    """They failed in the first training step with a traceback (or a ZeroDivisionError when built)."""
    with pytest.raises(TrainingError) as e:
        train(_cfg(synthetic_csv, tmp_path / "r", model=model, model_kwargs=kwargs, lr=-1.0), progress=False)
    assert words in str(e.value) and "--lr must be positive" in str(e.value)  # all at once, before any work
    assert not (tmp_path / "r").exists()


def test_a_run_stopped_between_last_pt_and_best_pt_resumes_with_the_best_epoch(synthetic_csv, tmp_path, monkeypatch,
                                                                              capsys):
    """QA: best.pt was written before last.pt, so a run killed between them (SIGKILL, power, a full disk) had a
    best.pt that no --resume could continue; a damaged metrics.json then crashed the next improved epoch, and a
    killed write's temporary file stayed in the run folder."""
    from fer_edge.training import trainer as trainer_mod

    real_metrics, calls = trainer_mod.classification_metrics, {"n": 0}

    def improving(*a, **k):  # every epoch is a new best
        calls["n"] += 1
        return {**real_metrics(*a, **k), "accuracy": calls["n"] / 10}

    real_save = trainer_mod.save_checkpoint

    def disk_full_at_epoch_2_best(path, payload, *a, **k):
        if Path(path).name == "best.pt" and payload["epoch"] == 2:
            raise OSError(28, "No space left on device", str(path))
        return real_save(path, payload, *a, **k)

    out = tmp_path / "r"
    monkeypatch.setattr(trainer_mod, "classification_metrics", improving)
    monkeypatch.setattr(trainer_mod, "save_checkpoint", disk_full_at_epoch_2_best)
    with pytest.raises(OSError):
        train(_cfg(synthetic_csv, out, epochs=3), progress=False)
    monkeypatch.setattr(trainer_mod, "save_checkpoint", real_save)
    assert load_checkpoint(out / "last.pt").raw["resume"]["best_epoch"] == 2 and load_checkpoint(out / "best.pt").epoch == 1
    (out / "metrics.json").write_text('{"model": "simple_')  # cut short
    (out / ".tmp-last-x1y2.pt").write_bytes(b"half a checkpoint")  # a killed write's leftover
    capsys.readouterr()
    res = train(_cfg(synthetic_csv, out, epochs=3), resume=True, progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert "holds epoch 1, not the best epoch 2" in err and "written again from" in err, err
    assert res.best_epoch == 3 and load_checkpoint(out / "best.pt").epoch == 3
    assert json.loads((out / "metrics.json").read_text())["best_val"]["split"] == "PublicTest"
    assert not list(out.glob(".tmp-*")) and not (out / ".fer-edge-train.lock").exists()


def test_resume_with_a_truncated_last_pt_says_what_can_still_be_done(synthetic_csv, tmp_path, monkeypatch):
    out = tmp_path / "r"
    _stopped_after_one_epoch(_cfg(synthetic_csv, out, epochs=3), monkeypatch)
    (out / "last.pt").write_bytes((out / "last.pt").read_bytes()[:1000])
    with pytest.raises(TrainingError) as e:
        train(_cfg(synthetic_csv, out, epochs=3), resume=True, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"--resume cannot continue the run in {out}: ") and "not a readable checkpoint" in msg, msg
    assert f"pass --init {out / 'best.pt'} with another --out" in msg, msg


def test_two_runs_with_one_out_do_not_write_over_each_other(synthetic_csv, tmp_path, monkeypatch):
    """QA: two `fer-edge train --out r` started at once both ran, the second's files replacing the first's."""
    import fcntl

    from fer_edge.training import trainer as trainer_mod

    out = tmp_path / "r"
    out.mkdir()
    with open(out / trainer_mod.LOCK_FILE, "a") as held:  # another process writing the run
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(TrainingError, match="another fer-edge train is writing this run now"):
            train(_cfg(synthetic_csv, out, epochs=1), progress=False)
    assert (out / trainer_mod.LOCK_FILE).exists()  # the other process's lock file is not removed
    (out / trainer_mod.LOCK_FILE).unlink()
    # the other run wrote its files while this one loaded the data: refused once the lock is taken
    real_load = trainer_mod.Trainer._load_data

    def other_run_meanwhile(self):
        data = real_load(self)
        (out / "history.csv").write_text("epoch\n1\n")
        return data

    monkeypatch.setattr(trainer_mod.Trainer, "_load_data", other_run_meanwhile)
    with pytest.raises(TrainingError, match=r"already holds a run \(history.csv\), written by another fer-edge train"):
        train(_cfg(synthetic_csv, out, epochs=1), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["history.csv"]
    # two --resume of one run: the one that read last.pt before the other wrote it is refused
    monkeypatch.undo()
    run = tmp_path / "r2"
    _stopped_after_one_epoch(_cfg(synthetic_csv, run, epochs=3), monkeypatch)
    newer = torch.load(run / "last.pt", weights_only=True)
    newer["resume"]["epoch"] = 2

    import fer_edge.utils

    real_hold = fer_edge.utils.hold_lock

    def resumed_meanwhile(path):  # between this run's read of last.pt and its lock (taken next, before any write)
        torch.save(newer, run / "last.pt")
        return real_hold(path)

    monkeypatch.setattr(fer_edge.utils, "hold_lock", resumed_meanwhile)
    with pytest.raises(TrainingError, match="last.pt changed while this run started"):
        train(_cfg(synthetic_csv, run, epochs=3), resume=True, progress=False)
    assert not (run / trainer_mod.LOCK_FILE).exists()


def test_wandb_without_its_package_is_refused_before_the_data_is_loaded(synthetic_csv, tmp_path, monkeypatch):
    """The missing package was found only after the data load (minutes on the full dataset)."""
    import sys

    from fer_edge.training.trainer import Trainer

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    loads = []
    monkeypatch.setattr(Trainer, "_load_data", lambda self: loads.append(1) or pytest.fail("data loaded"))
    with pytest.raises(TrainingError, match=r"--wandb needs the wandb package: pip install 'fer-edge\[wandb\]'"):
        train(_cfg(synthetic_csv, tmp_path / "w", wandb="proj"), progress=False)
    assert loads == [] and not (tmp_path / "w").exists()


def test_an_fp16_step_with_a_non_finite_loss_is_skipped_not_called_divergence(synthetic_csv, tmp_path, monkeypatch):
    """An fp16 overflow in one step (which the gradient scaler skips, leaving the weights as they were) made the
    epoch's loss inf, and the run stopped as "diverged"."""
    import math

    import torch.nn.functional as F

    real, calls = F.cross_entropy, []

    def overflow_once(*a, **k):
        out = real(*a, **k)
        calls.append(1)
        return out * float("inf") if len(calls) == 3 else out  # the third training step overflows

    monkeypatch.setattr(F, "cross_entropy", overflow_once)
    lines = []
    cfg = _cfg(synthetic_csv, tmp_path / "fp16", epochs=1, amp="fp16", mixup=0.0, cutmix=0.0)
    from fer_edge.training.trainer import Trainer

    trainer = Trainer(cfg, progress=False, quiet=True)
    monkeypatch.setattr(trainer, "log", lines.append)
    res = trainer.run()
    assert math.isfinite(res.history[0]["train_loss"]) and (tmp_path / "fp16" / "best.pt").is_file()
    assert any("(1 fp16 step with a non-finite loss skipped by the gradient scaler)" in ln for ln in lines), lines
    for v in load_checkpoint(tmp_path / "fp16" / "best.pt").state_dict.values():
        assert torch.isfinite(v.float()).all()  # the skipped step left the weights finite
    calls.clear()
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("inf"))  # every step
    with pytest.raises(TrainingError, match=r"is nan; nothing was saved\. Every step's fp16 loss was non-finite: "
                                            r"try --amp bf16 or --amp off\. Otherwise lower --lr"):
        train(_cfg(synthetic_csv, tmp_path / "all", epochs=1, amp="fp16"), progress=False)


def test_an_fp16_overflow_that_reaches_batchnorm_statistics_stops_the_run(synthetic_csv, tmp_path, monkeypatch):
    """QA: a batch whose forward pass overflowed fp16 was skipped by the gradient scaler, but its forward pass had
    written inf into BatchNorm's running statistics: the run saved best.pt and last.pt with NaN statistics (val
    loss NaN, chance accuracy) instead of stopping."""
    import fer_edge.training.trainer as T

    real, calls = T.augment_batch, []

    def overflow(x, a):
        calls.append(1)
        return real(x, a) * 1e6 if len(calls) == 3 else real(x, a)  # activations beyond float16's range

    monkeypatch.setattr(T, "augment_batch", overflow)
    out = tmp_path / "bn"
    with pytest.raises(TrainingError, match=r"training diverged: after epoch 1, (\d+) tensor\(s\) of the model and \1 "
                                            r"of its EMA copy hold inf or NaN \(e\.g\. .*running_(mean|var)\); "
                                            r"nothing was saved\. 1 fp16 step\(s\) overflowed.*BatchNorm's running "
                                            r"statistics: try --amp bf16 or --amp off\. Otherwise lower --lr"):
        train(_cfg(synthetic_csv, out, epochs=2, amp="fp16", model="fer_nano", mixup=0.0, cutmix=0.0, ema=0.9),
              progress=False)
    assert not (out / "best.pt").exists() and not (out / "last.pt").exists()
    # in a later epoch: last.pt holds the epoch before, and --resume with bf16 continues from it
    calls.clear()
    monkeypatch.setattr(T, "augment_batch", lambda x, a: calls.append(1) or (real(x, a) * 1e6 if len(calls) == 9
                                                                               else real(x, a)))
    cfg = _cfg(synthetic_csv, out, epochs=2, amp="fp16", model="fer_nano", mixup=0.0, cutmix=0.0)
    with pytest.raises(TrainingError, match=r"after epoch 2, (\d+) tensor\(s\) of the model hold inf.*this epoch was "
                                            r"not saved; .*last\.pt holds epoch 1\. .*the same command with --resume "
                                            r"and --amp bf16 \(or --amp off\) continues from epoch 1"):
        train(cfg, progress=False)
    monkeypatch.setattr(T, "augment_batch", real)
    res = train(TrainConfig(**{**cfg.to_dict(), "amp": "bf16"}), resume=True, progress=False)
    assert res.epochs_run == 2 and all(torch.isfinite(v.float()).all()
                                       for v in load_checkpoint(out / "last.pt").state_dict.values())


def test_weights_holding_inf_or_nan_are_refused_before_training_from_them(synthetic_csv, tmp_path):
    """QA: --init (or --resume of a last.pt an earlier fer-edge saved) with NaN BatchNorm statistics trained a whole
    epoch, then blamed the learning rate."""
    train(_cfg(synthetic_csv, tmp_path / "a", epochs=2, model="fer_nano"), progress=False)
    for name in ("best.pt", "last.pt"):
        raw = torch.load(tmp_path / "a" / name, weights_only=True)
        key = next(k for k in raw["state_dict"] if k.endswith("running_var"))
        raw["state_dict"][key][0] = float("nan")
        if name == "last.pt":  # as if saved after epoch 1 of 2
            raw["resume"]["model"][key][0] = float("nan")
            raw["resume"].update(epoch=1, history=raw["resume"]["history"][:1])
            raw["epoch"] = 1
        torch.save(raw, tmp_path / "a" / name)
    with pytest.raises(TrainingError, match=rf"--init {tmp_path / 'a' / 'best.pt'}: 1 of its tensors hold inf or NaN "
                                            rf"\(e\.g\. {key}\): the weights of a run that diverged"):
        train(_cfg(synthetic_csv, tmp_path / "b", epochs=1, model="fer_nano", init=str(tmp_path / "a" / "best.pt")),
              progress=False)
    assert not (tmp_path / "b").exists()
    with pytest.raises(TrainingError, match=r"--resume: .*last\.pt holds inf or NaN in 1 tensor\(s\) of the model "
                                            r"\(e\.g\. .*running_var\): the run had diverged when it was saved"):
        train(_cfg(synthetic_csv, tmp_path / "a", epochs=2, model="fer_nano"), resume=True, progress=False)
