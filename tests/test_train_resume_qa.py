"""A --resume after a crash at the wrong moment, or beside another process writing the run."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import torch
from test_training import _cfg  # the shared run config

from fer_edge.checkpoint import load_checkpoint
from fer_edge.errors import TrainingError
from fer_edge.training import train
from fer_edge.training import trainer as trainer_mod


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (not an Exception, so no handler tidies up)."""


def _improving(monkeypatch):
    """Every validated epoch is a new best (accuracy 0.1, 0.2, ...), whatever the tiny model learns."""
    real, calls = trainer_mod.classification_metrics, {"n": 0}

    def improving(*a, **k):
        calls["n"] += 1
        return {**real(*a, **k), "accuracy": calls["n"] / 10}

    monkeypatch.setattr(trainer_mod, "classification_metrics", improving)


def _report(out: Path) -> tuple[dict, str]:
    return json.loads((out / "metrics.json").read_text())["best_val"], (out / "per_class.csv").read_text()


@pytest.mark.parametrize("epochs", [3, 2], ids=["continued", "finished"])
def test_a_kill_between_best_pt_and_its_report_is_mended_on_resume(synthetic_csv, tmp_path, monkeypatch, capsys,
                                                                   epochs):
    """QA: a process killed after epoch 2's best.pt, before its per_class.csv/confusion matrix/best_val, left
    the report of epoch 1 beside epoch 2's weights for good (the resumed run, or a finished one, never rewrote
    it); a finished run's history.csv and metrics.json also stayed an epoch behind."""
    out = tmp_path / "r"
    real_write = trainer_mod.Trainer._write_eval_outputs

    def killed_at_epoch_2(self, metrics, split, epoch):
        if epoch == 2:
            raise _Killed
        return real_write(self, metrics, split, epoch)

    _improving(monkeypatch)
    monkeypatch.setattr(trainer_mod.Trainer, "_write_eval_outputs", killed_at_epoch_2)
    with pytest.raises(_Killed):
        train(_cfg(synthetic_csv, out, epochs=epochs), progress=False)
    monkeypatch.undo()
    assert load_checkpoint(out / "best.pt").epoch == 2 and _report(out)[0]["epoch"] == 1
    capsys.readouterr()

    res = train(_cfg(synthetic_csv, out, epochs=epochs), resume=True, progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert "report (per_class.csv, confusion matrix): the report was of epoch 1; made again from" in err, err
    best = load_checkpoint(out / "best.pt")
    report, per_class = _report(out)
    assert report["epoch"] == best.epoch == res.best_epoch
    from fer_edge.data import load_split

    val = load_split(str(synthetic_csv), "PublicTest")  # the report is best.pt's own, measured again here
    logits = trainer_mod.predict_logits(best.build_model(), val.images, best.normalization, torch.device("cpu"))
    truth = trainer_mod.classification_metrics(val.labels.numpy(), logits.argmax(1).numpy(), list(best.labels))
    assert report["confusion"] == truth["confusion"] and report["accuracy"] == pytest.approx(truth["accuracy"])
    # per_class.csv is the mended report's, row for row
    rows = dict(line.split(",", 1) for line in per_class.strip().splitlines()[1:])
    assert rows == {k: f"{v['precision']:.4f},{v['recall']:.4f},{v['f1']:.4f},{v['support']}"
                    for k, v in report["per_class"].items()}
    metrics = json.loads((out / "metrics.json").read_text())
    history = (out / "history.csv").read_text().strip().splitlines()
    assert metrics["epochs_run"] == epochs == len(history) - 1 and metrics["finished"] is True


def test_a_run_whose_report_is_current_is_not_evaluated_again(synthetic_csv, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    _improving(monkeypatch)
    train(_cfg(synthetic_csv, out, epochs=2), progress=False)
    before = (out / "metrics.json").read_bytes(), (out / "history.csv").read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(trainer_mod, "predict_logits", lambda *a, **k: pytest.fail("evaluated again"))
    train(_cfg(synthetic_csv, out, epochs=2), resume=True, progress=False)
    assert "nothing to resume" in capsys.readouterr().err
    assert ((out / "metrics.json").read_bytes(), (out / "history.csv").read_bytes()) == before


def test_a_refused_resume_changes_nothing_in_a_run_another_process_is_writing(synthetic_csv, tmp_path, monkeypatch):
    """QA: a second ``--resume`` of a live run removed that run's half-written ``.tmp-last-*.pt`` (and could write
    best.pt again) before finding the run locked; the live run then died on its missing temporary file."""
    from fer_edge.utils import hold_lock, release_lock

    out = tmp_path / "r"
    monkeypatch.setattr(trainer_mod.Trainer, "_write_eval_outputs", lambda *a: None)
    with pytest.raises(_Killed):  # a run stopped after epoch 1, to resume
        monkeypatch.setattr(trainer_mod.Trainer, "_write_history", lambda *a: (_ for _ in ()).throw(_Killed()))
        train(_cfg(synthetic_csv, out), progress=False)
    monkeypatch.undo()
    live = out / ".tmp-last-live.pt"
    live.write_bytes(b"the live run's epoch, being written")
    lock = hold_lock(out / trainer_mod.LOCK_FILE)  # the live run holds the lock
    try:
        with pytest.raises(TrainingError, match="another fer-edge train is writing this run now"):
            train(_cfg(synthetic_csv, out), resume=True, progress=False)
        assert live.read_bytes() == b"the live run's epoch, being written"
        assert (out / trainer_mod.LOCK_FILE).exists()  # still the live run's
    finally:
        release_lock(out / trainer_mod.LOCK_FILE, lock)


def test_a_resume_refused_for_other_options_lets_the_lock_go(synthetic_csv, tmp_path, monkeypatch):
    out = tmp_path / "r"
    with pytest.raises(_Killed):
        monkeypatch.setattr(trainer_mod.Trainer, "_write_history", lambda *a: (_ for _ in ()).throw(_Killed()))
        train(_cfg(synthetic_csv, out), progress=False)
    monkeypatch.undo()
    with pytest.raises(TrainingError, match="options differ"):
        train(_cfg(synthetic_csv, out, lr=1e-3), resume=True, progress=False)
    assert not (out / trainer_mod.LOCK_FILE).exists()
    res = train(_cfg(synthetic_csv, out), resume=True, progress=False)  # the same process can resume it now
    assert res.epochs_run == 3


def test_a_checkpoint_is_named_by_the_bytes_it_was_loaded_from(tiny_checkpoint, tmp_path, monkeypatch):
    """QA: eval hashed best.pt with a second read, so a training run replacing it between the two reads named the
    confusion matrix (and an export's manifest) after weights it had not used."""
    import shutil

    from fer_edge import checkpoint as ck_mod
    from fer_edge.utils import sha256_path

    path = tmp_path / "best.pt"
    shutil.copyfile(tiny_checkpoint, path)
    first = sha256_path(path)
    real_load = torch.load

    def replaced_after_reading(*a, **k):  # a training run writes a new best.pt (a rename) as this one is loaded
        out = real_load(*a, **k)
        newer = tmp_path / ".tmp-best.pt"
        newer.write_bytes(path.read_bytes() + b"\0")
        os.replace(newer, path)
        return out

    monkeypatch.setattr(torch, "load", replaced_after_reading)
    ck = ck_mod.load_checkpoint(path)
    assert sha256_path(path) != first and ck.sha256 == first


def test_history_csv_rows_end_in_a_plain_newline(synthetic_csv, tmp_path):
    out = tmp_path / "r"
    train(_cfg(synthetic_csv, out, epochs=1), progress=False)
    data = (out / "history.csv").read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 2


def test_a_run_folder_hint_names_a_checkpoint_whatever_the_case_of_its_suffix(tiny_checkpoint, tmp_path):
    import shutil

    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.errors import CheckpointError

    shutil.copyfile(tiny_checkpoint, tmp_path / "BEST.PT")
    with pytest.raises(CheckpointError, match=r"give a checkpoint file in it, e.g. .*BEST\.PT"):
        load_checkpoint(tmp_path)


def test_a_missing_per_class_csv_is_made_again_and_said_so(synthetic_csv, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    _improving(monkeypatch)
    train(_cfg(synthetic_csv, out, epochs=2), progress=False)
    monkeypatch.undo()
    (out / "per_class.csv").unlink()
    capsys.readouterr()
    train(_cfg(synthetic_csv, out, epochs=2), resume=True, progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert "(per_class.csv, confusion matrix): per_class.csv was missing; made again from" in err, err
    assert (out / "per_class.csv").is_file()


def test_another_rank_of_a_refused_resume_leaves_a_live_runs_files(synthetic_csv, tmp_path, monkeypatch):
    """The resume's lock is rank 0's: a second torchrun --resume's other ranks removed the live run's temporary
    files all the same."""
    from fer_edge.utils import hold_lock, release_lock

    out = tmp_path / "r"
    with pytest.raises(_Killed):
        monkeypatch.setattr(trainer_mod.Trainer, "_write_history", lambda *a: (_ for _ in ()).throw(_Killed()))
        train(_cfg(synthetic_csv, out), progress=False)
    monkeypatch.undo()
    live = out / ".tmp-last-live.pt"
    live.write_bytes(b"the live run's epoch, being written")
    lock = hold_lock(out / trainer_mod.LOCK_FILE)
    try:
        rank1 = trainer_mod.Trainer(_cfg(synthetic_csv, out), progress=False, quiet=True)
        rank1.dist.rank = 1
        with contextlib.suppress(Exception):  # whatever rank 1 then meets alone (no process group here)
            rank1.run(resume=True)
        assert live.read_bytes() == b"the live run's epoch, being written"
    finally:
        release_lock(out / trainer_mod.LOCK_FILE, lock)


def test_a_checkpoint_written_over_in_place_while_loaded_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    """QA (race_ck.py): hashed, then loaded from the same open file: a writer rewriting it in place between the two
    (cp, rsync --inplace) had its new weights loaded under the old file's SHA-256."""
    import shutil

    from fer_edge import checkpoint as ck_mod
    from fer_edge.errors import CheckpointError

    path = tmp_path / "t.pt"
    shutil.copyfile(tiny_checkpoint, path)
    real_load = torch.load

    def rewritten_in_place(*a, **k):
        with open(path, "r+b") as fh:  # the same file, other bytes: no rename
            fh.seek(0, os.SEEK_END)
            fh.write(b"\0")
        return real_load(*a, **k)

    monkeypatch.setattr(torch, "load", rewritten_in_place)
    with pytest.raises(CheckpointError, match="the file changed while it was read"):
        ck_mod.load_checkpoint(path)
