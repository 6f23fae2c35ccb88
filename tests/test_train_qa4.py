"""QA of ``fer-edge train``, round 4: class weights with a class missing from the training split, each torchrun
process's own augmentation stream, a cosine warm-up not shorter than the run, the distillation loss's T^2 in the
help and README, and history's ``lr`` column."""
from __future__ import annotations

import csv
import hashlib
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from test_training import _cfg  # the shared run config

from fer_edge.training import TrainConfig, train
from fer_edge.training.trainer import (Trainer, augment_seed, class_weight_tensor, epoch_seed, make_scheduler,
                                       setup_warnings)

README = Path(__file__).resolve().parents[1] / "README.md"


# --- 1. --class-weights with a class the training split lacks ------------------------------------------------
@pytest.mark.parametrize("mode", ["balanced", "sqrt"])
def test_a_class_missing_from_the_training_split_gets_no_weight(mode):
    """It got the weight of a one-image class (hundreds of times the others'); label smoothing's term sums every
    class's weight, so every image was pushed to the missing class (training accuracy 0.0)."""
    counts = torch.tensor([40, 0, 30, 80, 50, 20, 60])  # no disgust
    labels = torch.repeat_interleave(torch.arange(7), counts)
    w = class_weight_tensor(labels, mode, 7)
    assert w[1] == 0
    present = counts > 0
    # the others: inversely proportional to their count (or its square root), images' weights averaging 1
    power = 1.0 if mode == "balanced" else 0.5
    expected = 1 / counts[present].double() ** power
    expected = expected / (expected * counts[present]).sum() * counts.sum()
    assert torch.allclose(w[present].double(), expected, rtol=1e-6)
    # no image's label-smoothed loss pulls the logits toward the missing class: its gradient there is >= 0
    logits = torch.zeros(len(labels), 7, requires_grad=True)
    F.cross_entropy(logits, labels, weight=w, label_smoothing=0.1).backward()
    assert bool((logits.grad[:, 1] >= 0).all())


@pytest.mark.parametrize("mode", ["balanced", "sqrt"])
def test_class_weights_with_every_class_present_are_unchanged(mode):
    counts = torch.tensor([40, 5, 30, 80, 50, 20, 60])
    labels = torch.repeat_interleave(torch.arange(7), counts)
    c = counts.float()
    w = c.sum() / (7 * c)
    w = w.sqrt() if mode == "sqrt" else w
    assert torch.equal(class_weight_tensor(labels, mode, 7), w / (w * c).sum() * c.sum())  # the formula, bit for bit


# --- 2. each torchrun process augments with its own random stream ----------------------------------------------
def test_every_rank_but_the_first_has_its_own_augmentation_seed():
    assert augment_seed(0, 0, 0) is None and augment_seed(5, 3, 0) is None  # rank 0: the shuffle's stream goes on
    seeds = {augment_seed(s, e, r) for s in (0, 1) for e in (0, 1, 2) for r in (1, 2, 3)}
    assert len(seeds) == 18 and all(0 <= x < 2**63 for x in seeds)
    assert augment_seed(1, 2, 3) == augment_seed(1, 2, 3)  # per epoch, so --resume repeats it
    assert epoch_seed(2, 5) == 2 * 100_003 + 5  # single-process runs keep their stream


def _augment_draws(cfg, monkeypatch, rank: int) -> list[tuple[str, str]]:
    """(the batch's images, the RNG state it is augmented with) of each step of a run as process ``rank``."""
    import fer_edge.training.trainer as trainer_module

    seen = []
    from fer_edge.training.augment import augment_batch as real

    def recording(x, aug):
        seen.append((hashlib.sha1(x.numpy().tobytes()).hexdigest(),
                     hashlib.sha1(torch.random.get_rng_state().numpy().tobytes()).hexdigest()))
        return real(x, aug)

    monkeypatch.setattr(trainer_module, "augment_batch", recording)
    t = Trainer(cfg, progress=False, quiet=True)
    t.dist.rank = rank  # one process standing for rank 1 of a torchrun: the same shuffle, its own draws
    t.run()
    return seen


def test_each_rank_draws_its_own_augmentation_for_the_shared_shuffle(synthetic_csv, tmp_path, monkeypatch):
    """Under torchrun every rank reseeded with (seed, epoch) alone, so all drew the same flips, angles, erasing,
    replay views and mix parameters for their different images."""
    kw = dict(epochs=2, max_steps_per_epoch=2, val_every=2)
    rank0 = _augment_draws(_cfg(synthetic_csv, tmp_path / "r0", **kw), monkeypatch, 0)
    rank1 = _augment_draws(_cfg(synthetic_csv, tmp_path / "r1", **kw), monkeypatch, 1)
    assert len(rank0) == len(rank1) == 4
    assert [x for x, _ in rank0] == [x for x, _ in rank1]  # the shared shuffle: the same images
    assert all(a != b for (_, a), (_, b) in zip(rank0, rank1))  # drawn with other random numbers
    # rank 0 (every single-process run) draws what it always did: the epoch's seed, then the shuffle
    torch.manual_seed(epoch_seed(0, 1))
    torch.randperm(280)
    assert rank0[2][1] == hashlib.sha1(torch.random.get_rng_state().numpy().tobytes()).hexdigest()


# --- 3. a cosine warm-up not shorter than the run ---------------------------------------------------------------
def _lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The LR each step of a run uses."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_scheduler(cfg, opt, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_a_cosine_warm_up_as_long_as_the_run_is_cut_as_onecycles_is():
    """--scheduler cosine --warmup-epochs 3 --epochs 2 rose to 2/3 of --lr and never decayed, without a word."""
    for warmup in (2.0, 3.0):
        cfg = TrainConfig(data="d", scheduler="cosine", warmup_epochs=warmup, epochs=2, lr=0.1)
        lrs = _lrs(cfg, 10)
        assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == 5  # warmed up over 30% of the 20 steps
        assert lrs[-1] < 0.01  # then decays
        one = _lrs(TrainConfig(data="d", warmup_epochs=warmup, epochs=2, lr=0.1), 10)  # onecycle: also 30%
        assert one.index(max(one)) == 5
    split = SimpleNamespace(split="Training", labels=torch.arange(7))
    val = SimpleNamespace(split="PublicTest")
    cfg = TrainConfig(data="d", scheduler="cosine", warmup_epochs=3, epochs=2)
    (said,) = setup_warnings(cfg, split, val, torch.device("cpu"))
    assert said.startswith("--warmup-epochs 3 is not shorter than the run (--epochs 2)") and "30%" in said
    for quiet in (TrainConfig(data="d", scheduler="cosine", warmup_epochs=1.9, epochs=2),  # shorter: as it was
                  TrainConfig(data="d", warmup_epochs=1, epochs=1)):  # onecycle's cap is in its help, not a warning
        assert setup_warnings(quiet, split, val, torch.device("cpu")) == []


def test_a_cosine_warm_up_shorter_than_the_run_is_as_it_was():
    cfg = TrainConfig(data="d", scheduler="cosine", warmup_epochs=1.5, epochs=2, lr=0.1)
    warm, total = 15, 20
    want = [0.1 * ((s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
            for s in range(total)]
    assert _lrs(cfg, 10) == pytest.approx(want, rel=1e-12)


# --- 4. the distillation loss's T^2 -------------------------------------------------------------------------------
def test_the_help_and_readme_state_the_distillation_losss_temperature_squared():
    import typer.main

    from fer_edge.cli import app

    command = typer.main.get_command(app).commands["train"]
    helps = {p.name: p.help for p in command.params}
    assert "alpha x T^2 x the KL divergence" in helps["distill_alpha"]
    assert "scaled by T^2" in helps["distill_temperature"]
    text = " ".join(README.read_text().split())
    stated = re.findall(r"cross-entropy \+ 0\.7 x (.{0,40})the KL divergence", text)
    assert len(stated) == 2 and all(s == "16 (the temperature squared) x " for s in stated), stated


# --- 5. history's lr: the LR of the epoch's last step ---------------------------------------------------------------
def test_history_records_the_lr_of_each_epochs_last_step(synthetic_csv, tmp_path):
    """It recorded the LR after the last scheduler step (the next epoch's first): cosine's last epoch read 0.0."""
    res = train(_cfg(synthetic_csv, tmp_path / "r", epochs=2, max_steps_per_epoch=3, scheduler="cosine",
                     warmup_epochs=0, lr=0.01), progress=False, quiet=True)
    want = [0.01 * 0.5 * (1 + math.cos(math.pi * s / 6)) for s in (2, 5)]
    assert [r["lr"] for r in res.history] == pytest.approx(want, rel=1e-9)
    rows = list(csv.DictReader((tmp_path / "r" / "history.csv").open()))
    assert [float(r["lr"]) for r in rows] == pytest.approx(want, rel=1e-9) and float(rows[-1]["lr"]) > 0


@pytest.mark.parametrize("scheduler", ["step", "none"])
def test_a_warmup_where_the_schedule_has_none_is_a_usage_error(scheduler, synthetic_csv, tmp_path):
    """--warmup-epochs under --scheduler step or none was taken and silently ignored."""
    from typer.testing import CliRunner

    from fer_edge.cli import app

    r = CliRunner().invoke(app, ["train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--out",
                                 str(tmp_path / "r"), "--scheduler", scheduler, "--warmup-epochs", "1",
                                 "--epochs", "1", "--device", "cpu", "--no-progress"], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "--warmup-epochs applies to the onecycle and cosine schedules only" in r.output, \
        r.output
    assert not (tmp_path / "r").exists()
