"""A time-boxed distillation round: teachers, then students distilled from them, sized to one wall-clock budget.

Written for a lent GPU, where one command may run about ten minutes and the machine is gone afterwards,
but it runs wherever ``fer-edge train`` does::

    python -m fer_edge.training.distill_round --data DATA --work runs/round --out OUT --budget-minutes 8

1. **Probe.** Each stage trains two short epochs (``--probe-steps`` steps each) to measure this machine's
   training images per second and validation seconds. A student's probe distils from its teachers' probe
   checkpoints (and any checkpoints from outside the round), so the teachers' forward passes are in its timing.
   The round may spend at most :data:`PROBE_SHARE` of its budget before training (loading the data and the
   probe; and the checks, unless the caller ran them before the round's clock started, as :func:`main` does): a
   probe that reaches that limit is stopped, and the round does not start.
2. **Run.** Stages run in order. Each gets the budget left when it starts, times its share of the shares
   still to run, turned into epochs with the probe's figures and capped at the stage's ``max_epochs``. The
   allotment is recomputed from the clock at every stage, so a stage that runs long takes from the later ones.
   A stage whose allotment is under one epoch is skipped. A stage with several teachers distils from their
   ensemble (``fer-edge train --distill A --distill B``); when some of them did not finish, from those that did
   (the summary's ``note`` names the missing ones), and a stage none of whose teachers finished is skipped.
3. **Keep.** After each stage its ``history.csv`` (and, where the stage keeps it, ``best.pt``) is copied to
   ``OUT`` at once and ``OUT/summary.json`` is rewritten: per stage the exact ``fer-edge train`` command, the
   epochs, the best validation accuracy and epoch, seconds, and the probe's figures. Interrupted (Ctrl-C,
   SIGTERM, a timeout that sends either), the round keeps what the running stage had and says so.
   ``OUT/distill_round.log`` gets every line the round prints, appended as it is printed (:class:`_RoundLog`).

Each stage is an ordinary ``fer-edge train`` run in ``WORK/<stage>``; the commands in the summary rerun it
without this module. Model selection is ``fer-edge train``'s: the best epoch on the validation split.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from fer_edge.constants import TRAIN_DEVICES
from fer_edge.errors import FerEdgeError, TrainingError
from fer_edge.training.config import TrainConfig

#: The round's own log, in ``OUT`` (:class:`_RoundLog`).
LOG_NAME = "distill_round.log"

#: The most of its budget the round spends before its first stage trains: its checks, loading the data, and the
#: probe, which is stopped when it reaches the limit (:func:`_probe_deadline`). Unbounded, a slow probe (a large
#: ``--probe-steps``, a slow first epoch) could spend the whole budget and leave the stages nothing, or next to
#: nothing: a teacher of one or two epochs teaches its students little.
PROBE_SHARE = 0.25

#: Seconds added to each estimated epoch for checkpoint writes and bookkeeping, and the factor on the estimate.
EPOCH_OVERHEAD_S = 0.5
ESTIMATE_MARGIN = 1.05


@dataclass(frozen=True)
class Stage:
    """One ``fer-edge train`` run of the round."""

    name: str
    model: str
    share: float  # of the budget left when the stage starts, relative to the shares of the stages still to run
    max_epochs: int
    teachers: tuple[str, ...] = ()  # earlier stages' names: their best.pt files are the --distill ensemble
    extra_teachers: tuple[str, ...] = ()  # checkpoint paths from outside the round, added to that ensemble
    options: dict = field(default_factory=dict)  # further TrainConfig fields
    keep_checkpoint: bool = True  # copy best.pt to OUT (a teacher too large to bring back sets False)


#: The round for the shipped weights: a ResNet-18 teacher (11.2M float32 parameters, about 45 MB, so its
#: checkpoint stays in WORK), then small and nano distilled from it from scratch with their CPU recipes' settings;
#: the teacher's settings are untried (see README).
DEFAULT_STAGES: tuple[Stage, ...] = (
    Stage("teacher", "resnet18", 0.4, 80, keep_checkpoint=False,
          options=dict(lr=1e-3, weight_decay=0.05, label_smoothing=0.1, ema=0.998, augment="strong")),
    Stage("small", "fer_small", 0.35, 150, teachers=("teacher",),
          options=dict(lr=3e-3, weight_decay=0.05, label_smoothing=0.1, ema=0.998, augment="strong",
                       distill_alpha=0.7, distill_tta=True)),
    Stage("nano", "fer_nano", 0.25, 150, teachers=("teacher",),
          options=dict(lr=4e-3, label_smoothing=0.1, ema=0.998, augment="standard",
                       distill_alpha=0.7, distill_tta=True)),
)


#: ``--students finetune``: the students start from the shipped weights (``--init``) and take their CPU
#: fine-tunes' peak LRs (small 1e-3, nano 2e-3), with more epochs allowed since the teacher is new.
FINETUNE = {"small": dict(max_epochs=60, options=dict(init="small", lr=1e-3)),
            "nano": dict(max_epochs=80, options=dict(init="nano", lr=2e-3))}


def finetune_stage(stage: Stage, shipped: str) -> Stage:
    """``stage`` turned into a fine-tune of the shipped weight ``shipped`` (see :data:`FINETUNE`)."""
    from fer_edge.weights import resolve_checkpoint

    spec = FINETUNE[shipped]
    path = _as_typed(resolve_checkpoint(spec["options"]["init"]))
    return replace(stage, max_epochs=spec["max_epochs"],
                   options={**stage.options, **spec["options"], "init": str(path)})


def _as_typed(path: Path) -> Path:
    """``path`` relative to the working directory where it lies under it, so the summary's commands read as typed
    in the repository."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


#: The batch size the stage tables' learning rates were set for; ``--lr-scale`` scales them from it.
REFERENCE_BATCH = 128
LR_SCALE_POWER = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}


def scale_lr(stage: Stage, batch_size: int, rule: str) -> Stage:
    """``stage`` with its peak LR scaled from :data:`REFERENCE_BATCH` to ``batch_size`` by ``rule``
    (``sqrt``: the usual rule for Adam-type optimizers; ``linear``: Goyal et al.'s for SGD)."""
    factor = (batch_size / REFERENCE_BATCH) ** LR_SCALE_POWER[rule]
    lr = stage.options.get("lr", TrainConfig.__dataclass_fields__["lr"].default)
    return replace(stage, options={**stage.options, "lr": lr * factor}) if factor != 1.0 else stage


def _shares(text: str) -> tuple[float, float, float]:
    """``--shares``: three finite, positive numbers whose sum is finite. An infinite share (``inf``, or ``1e308``
    three times, whose sum overflows) made a stage's allotment inf/inf, NaN, which failed the round after its probe
    with a traceback."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values) or not math.isfinite(sum(values)):
        raise argparse.ArgumentTypeError(f"expected three positive numbers (finite, with a finite sum), "
                                         f"teacher,small,nano; got {text!r}")
    return values


#: TrainConfig fields a stage table sets itself, so ``--teacher-set`` may not.
RESERVED = frozenset({"data", "model", "out", "epochs", "distill"})


def _convert_option(tp, text: str):
    """``text`` as a value of the type annotation ``tp`` (``none`` for an optional field's None)."""
    import json
    import types
    import typing

    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        if text.lower() == "none":
            return None
        (tp,) = [a for a in args if a is not type(None)]
    if tp is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError("expected true or false")
        return text.lower() == "true"
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    if tp is dict:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("expected a JSON object")
        return value
    if tp is str:
        return text
    raise ValueError(f"a {tp} option cannot be set here")


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` strings (``--teacher-set``) as TrainConfig options, each value converted to its field's type
    (``true``/``false`` for switches, ``none`` for optional fields, JSON for ``model_kwargs``); every problem at
    once. The types are the dataclass's resolved annotations (``typing.get_type_hints``), not their text."""
    import typing

    types = typing.get_type_hints(TrainConfig)
    out, problems = {}, []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            problems.append(f"{item!r}: expected KEY=VALUE")
            continue
        if key in RESERVED or key not in types:
            problems.append(f"{key!r}: not a TrainConfig option the round lets you set"
                            + (" (the round sets it)" if key in RESERVED else ""))
            continue
        try:
            out[key] = _convert_option(types[key], text)
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            problems.append(f"{key}={text!r}: {e}")
    if problems:
        raise TrainingError("bad --teacher-set: " + "; ".join(problems))
    return out


def check_stages(stages: tuple[Stage, ...] | list[Stage]) -> None:
    """Every problem with a stage table at once."""
    problems, seen = [], set()
    known = set(TrainConfig.__dataclass_fields__) - RESERVED
    for s in stages:
        if s.name in seen:
            problems.append(f"stage name {s.name!r} is used twice")
        if isinstance(s.teachers, str) or isinstance(s.extra_teachers, str):
            problems.append(f"stage {s.name!r}: teachers and extra_teachers are tuples of names, not strings")
        else:
            for t in s.teachers:
                if t not in seen:
                    problems.append(f"stage {s.name!r}: teacher {t!r} is not an earlier stage")
            for t in _repeated([*s.teachers, *s.extra_teachers]):
                problems.append(f"stage {s.name!r}: teacher {t!r} is given twice (its ensemble would only weight "
                                "that member twice)")
        if not (isinstance(s.share, (int, float)) and math.isfinite(s.share) and s.share > 0):
            problems.append(f"stage {s.name!r}: share must be positive and finite, not {s.share}")
        if s.max_epochs < 1:
            problems.append(f"stage {s.name!r}: max_epochs must be at least 1, not {s.max_epochs}")
        unknown = sorted(set(s.options) - known)
        if unknown:
            problems.append(f"stage {s.name!r}: unknown or reserved options {unknown}")
        seen.add(s.name)
    if not stages:
        problems.append("no stages")
    elif not problems and not math.isfinite(sum(s.share for s in stages)):  # inf/inf: a NaN allotment
        problems.append("the stages' shares add up to more than a float holds: give smaller shares")
    if problems:
        raise TrainingError("bad round: " + "; ".join(problems))


def _repeated(names) -> list[str]:
    """The names in ``names`` given more than once, each once, in order."""
    seen: set[str] = set()
    return list(dict.fromkeys(n for n in names if n in seen or seen.add(n)))


def _config(stage: Stage, data: str, out: Path, epochs: int, common: dict, teachers: list[Path]) -> TrainConfig:
    return TrainConfig(data=data, model=stage.model, out=str(out), epochs=epochs,
                       distill=[str(t) for t in teachers] + list(stage.extra_teachers), **{**common, **stage.options})


def _copy_atomic(src: Path, dest: Path) -> None:
    from fer_edge.utils import atomic_path

    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def _describe_device(d, threads: int) -> str:
    import platform

    import torch

    if d.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(d)}"
    return f"{d.type}: {platform.processor() or platform.machine()}, {threads or torch.get_num_threads()} torch threads"


def _remove_probes(work: Path, stages, made: list[Path]) -> None:
    """Remove the probe runs of a round that did not start (the preflight made sure none was there before it),
    then ``WORK/probe`` and the folders in ``made`` (those the round created) when that leaves them empty, so
    that the same command can run again and nothing empty is left behind."""
    for s in stages:
        shutil.rmtree(work / "probe" / s.name, ignore_errors=True)
    for folder in [work / "probe", *made]:
        try:
            folder.rmdir()
        except OSError:
            pass  # absent, or holding something the round did not make


class _RoundLog:
    """The round's log: each line goes to the caller's ``log`` (stdout, for :func:`main`) and is appended to
    ``path``, which is opened, written and closed again for every line.

    Without it the round's lines went only to stdout and stderr, kept only where the caller redirected them (a lent
    GPU's tool returns the output's last 12,000 characters). Each line is on disk before the round goes on, so a
    round killed at a hard time limit still leaves its log up to that moment. A log that cannot be written (a full
    disk) is said once and then left alone: it never stops the round.

    An output whose reader went away (``... | head -1``: a BrokenPipeError) does not stop it either: stdout is
    pointed at /dev/null, as the fer-edge commands do before they exit 141, a warning says so once on stderr, and
    the round goes on to its own end with its lines in ``path`` only. Before, the first line after the reader left
    killed the round with a traceback: during the probe with its probe runs left in ``WORK`` (so the same command
    was refused), during a stage with that stage "running" in the summary.

    ``on_interrupt``: where the round's ``interrupted: ...`` line goes besides ``path`` (:func:`main`: stderr, as
    every command's); None: to ``log`` with the others.
    """

    def __init__(self, log: Callable[[str], None], path: Path, on_interrupt: Callable[[str], None] | None = None):
        self.log, self.path, self.on_interrupt = log, path, on_interrupt
        self.broken = self.output_gone = False

    def __call__(self, message: str) -> None:
        self.write(message)  # first: the caller's output may be what fails (a closed pipe)
        self.say(message)

    def say(self, message: str) -> None:
        """``message`` to the caller's output only, until its reader has gone away."""
        if self.output_gone:
            return
        try:
            self.log(message)
        except BrokenPipeError:
            from fer_edge.cli.common import _stdout_to_devnull

            self.output_gone = True
            _stdout_to_devnull()  # so that the pending output, flushed again at exit, does not fail on the pipe
            note = ("warning: the output was closed (its reader went away): the round goes on, its lines in "
                    f"{self.path} only")
            self.write(note)
            with contextlib.suppress(OSError):  # stderr may have gone with it (2>&1)
                print(note, file=sys.stderr)

    def write(self, message: str) -> None:
        """``message`` to the file only: the round's start and end, and an error that the caller reports."""
        if self.broken:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(message + "\n")
        except OSError as e:
            self.broken = True
            self.say(f"the round's log {self.path} cannot be written ({e.strerror or e}): its lines go to the output "
                     "only")

    def interrupted(self, message: str) -> None:
        """The round's one ``interrupted: ...`` line (``message``), to the file and to ``on_interrupt``."""
        self.write(message)
        if self.on_interrupt is None:
            self.say(message)
        else:
            self.on_interrupt(message)

    def error(self, e: BaseException) -> BaseException:
        """``e``, written to the file as the caller reports it (``error: ...``), to raise."""
        self.write(f"error: {e}")
        return e


class _ProbeOverrun(BaseException):
    """The probe reached its limit (:data:`PROBE_SHARE`); its argument, when given, is the stage whose probe had
    not finished. A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on its way (the
    trainer's, a failed probe's) takes it for an error of the run."""


#: How soon the probe's alarm comes again after Python dropped its exception (see :func:`_probe_deadline`).
_OVERRUN_AGAIN_S = 0.01


@contextlib.contextmanager
def _probe_deadline(seconds: float | None, stage: str):
    """Raise :class:`_ProbeOverrun` (``stage``) in the block once ``seconds`` of real time have passed (a SIGALRM
    timer), as soon as the running step returns to Python. Python drops an exception raised while it runs a
    weakref callback or a ``__del__`` ("Exception ignored in: ..."): an alarm that landed there let the probe run
    on to its end (2.8x its limit), so the dropped exception (which reaches ``sys.unraisablehook``) sets the timer
    again, to raise at the next step. (A timer that simply repeated could interrupt the cleanup of the exception
    that did propagate.)

    None, or where no timer signal can be set (outside the main thread; no ``setitimer``, as on Windows): nothing,
    and the round's clock, read after each probe, stops the round once the probe that ran over has finished.
    """
    if seconds is None or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def overrun(signum, frame):
        raise _ProbeOverrun(stage)

    previous = signal.signal(signal.SIGALRM, overrun)
    previous_hook = sys.unraisablehook

    def dropped(unraisable):
        if unraisable.exc_type is _ProbeOverrun:  # raise it again where it cannot be dropped
            signal.setitimer(signal.ITIMER_REAL, _OVERRUN_AGAIN_S)
        else:
            previous_hook(unraisable)

    sys.unraisablehook = dropped
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:  # the handler is put back even when the alarm's exception arrives just as the timer stops
            signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
            sys.unraisablehook = previous_hook


def _seconds(x: float) -> str:
    """``x`` seconds with the digits that matter: ``120 s``, ``2.5 s``, ``0.00025 s``."""
    return f"{x:.0f} s" if x >= 10 else f"{x:.2g} s"


def _common(seed: int, batch_size: int, device: str, amp: str, threads: int, max_steps_per_epoch: int) -> dict:
    """The TrainConfig options every stage shares."""
    return dict(seed=seed, batch_size=batch_size, device=device, amp=amp, num_threads=threads,
                max_steps_per_epoch=max_steps_per_epoch)


def run_round(data: str | Path, work: str | Path, out: str | Path, budget_s: float, *,
              stages: tuple[Stage, ...] | list[Stage] = DEFAULT_STAGES, device: str = "auto", amp: str = "auto",
              seed: int = 0, parts_bytes: int = 0,
              batch_size: int = 128, probe_steps: int = 20, max_steps_per_epoch: int = 0, threads: int = 0,
              progress: bool = False, log: Callable[[str], None] = print,
              clock: Callable[[], float] = time.monotonic, checked: bool = False,
              on_interrupt: Callable[[str], None] | None = None) -> dict:
    """Run the round (see the module docstring) and return the summary also written to ``OUT/summary.json``.

    ``parts_bytes``: a stage that does not keep its checkpoint (the teacher) still sends it to ``OUT``, as
    float16 parts of at most this many bytes (:func:`fer_edge.checkpoint.split_checkpoint`); 0 sends none.

    Every problem with the options (a budget that is not a positive number, parts too small for the stage's
    largest tensor, ``OUT`` or ``WORK`` a file, a stage's training options) is reported at once before any
    training. A stage that fails, in training or while its outputs are kept (copied, split into parts), is
    recorded as failed in the summary and the others still run; a stage whose training finished still teaches
    its students from ``WORK`` when only keeping its outputs failed.
    Raises :class:`TrainingError` naming every failed stage after the others have run and been kept.

    Once ``OUT`` is made, every line given to ``log`` is also appended to ``OUT/distill_round.log`` as it is
    logged, with the round's start, its end or the error it raises (:class:`_RoundLog`); a round that stops before
    it trains (a failed or interrupted probe) leaves ``OUT`` in place for that log.

    A ``log`` whose reader went away (a closed stdout) does not stop the round: see :class:`_RoundLog`. An
    interrupt is said in one ``interrupted: ...`` line, to the log file and to ``on_interrupt`` (None: ``log``).

    ``checked``: the caller has just run those checks (:func:`_preflight`) on these same arguments, so they are
    not run again. :func:`main` does, to list their problems with its own (a missing ``--data``, a bad
    ``--teacher-set`` item) in one message. Run twice, they loaded every extra teacher and built every stage's
    model twice, the second time on the round's clock.
    """
    from fer_edge.data import default_train_split, load_split
    from fer_edge.training import train
    from fer_edge.training.trainer import resolve_device
    from fer_edge.utils import write_json_atomic

    check_stages(stages)
    data, work, out = str(data), Path(work), Path(out)
    start = clock()
    common = _common(seed, batch_size, device, amp, threads, max_steps_per_epoch)
    if not checked:
        _preflight(stages, data, common, work, out, budget_s=budget_s, parts_bytes=parts_bytes,
                   probe_steps=probe_steps)
    dev = resolve_device(device)
    if dev.type == "cuda":
        import torch

        torch.backends.cudnn.benchmark = True  # fixed 48x48 shapes: let cuDNN pick its fastest kernels once

    # every folder mkdir will create (parents too), deepest first: removed again, when empty, if the round does
    # not start
    made = sorted({q for p in (out, work) for q in (p, *p.parents) if not q.exists()},
                  key=lambda q: len(q.parts), reverse=True)
    for path, option in ((out, "--out"), (work, "--work")):
        try:  # os.access-based checks pass for root where the system still refuses (/proc, /sys)
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _remove_probes(work, stages, made)
            raise TrainingError(f"{option} {path}: cannot create it ({e.strerror or e}); choose another "
                                f"{option}") from None
    log = _RoundLog(log, out / LOG_NAME, on_interrupt)
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} round started: stages {', '.join(s.name for s in stages)}, "
              f"budget {budget_s:g} s, --data {data}, --work {work}, --device {device}")
    try:
        n_train = len(load_split(data, default_train_split(data), progress=progress).labels)
    except BaseException as e:
        _remove_probes(work, stages, made)
        if isinstance(e, FerEdgeError):
            log.error(e)
        elif isinstance(e, KeyboardInterrupt):
            gone = [str(f) for f in made if not f.exists()]
            log.interrupted(f"interrupted: while the data was loaded, so no stage was trained and nothing was kept "
                            f"but the round's log ({log.path})"
                            + (f"; {' and '.join(gone)}, which the round had made, were removed" if gone else "")
                            + ": the same command can run again")
        raise
    steps = max(1, n_train // batch_size)
    if max_steps_per_epoch:
        steps = min(steps, max_steps_per_epoch)
    entries = {s.name: {"name": s.name, "model": s.model, "status": "pending"} for s in stages}
    # fer-edge train's epoch: `steps` batches, the only one partial when the split is smaller than a batch
    images_per_epoch = min(steps * batch_size, n_train)
    summary = {"data": data, "budget_seconds": budget_s, "device": _describe_device(dev, threads),
               "train_images_per_epoch": images_per_epoch, "stages": list(entries.values())}

    def save_summary() -> None:
        summary["elapsed_seconds"] = round(clock() - start, 1)
        write_json_atomic(out / "summary.json", summary)

    def keep(stage: Stage, run_dir: Path) -> None:
        entry = entries[stage.name]
        if (run_dir / "history.csv").is_file():
            _copy_atomic(run_dir / "history.csv", out / f"{stage.name}_history.csv")
            entry["history"] = f"{stage.name}_history.csv"
        if stage.keep_checkpoint and (run_dir / "best.pt").is_file():
            _copy_atomic(run_dir / "best.pt", out / f"{stage.name}.pt")
            entry["checkpoint"] = f"{stage.name}.pt"
        elif parts_bytes and (run_dir / "best.pt").is_file():
            from fer_edge.checkpoint import split_checkpoint

            parts = split_checkpoint(run_dir / "best.pt", out / stage.name, parts_bytes,
                                     on_removed=lambda p: log(f"{stage.name}: removed {p}, a part of an earlier "
                                                              "split into more parts"))
            entry["checkpoint_parts"] = [p.name for p in parts]

    def try_keep(stage: Stage, run_dir: Path) -> str:
        """keep(), its failure as a phrase ("" when it worked): a stage's outputs that cannot be kept fail that
        stage only."""
        try:
            keep(stage, run_dir)
        except (FerEdgeError, OSError) as e:
            log(f"{stage.name}: its outputs could not be kept in {out}: {e}")
            return f"keeping its outputs in {out} failed: {e}"
        return ""

    failures: list[str] = []
    current: tuple[Stage, Path] | None = None
    probing = False
    started: list[str] = []  # the stages whose training started
    spent = False  # a stage found the budget spent before it could run
    probe_limit = budget_s * PROBE_SHARE
    try:
        # 1. probe every stage, within the probe's limit: a timer stops a probe that reaches it, on the real clock
        # only (a caller's clock, a test's, is not one a timer can wait on); the clock is read after each probe too
        probing = True
        for stage in stages:
            if clock() - start >= probe_limit:
                raise _ProbeOverrun(stage.name)
            run_dir = work / "probe" / stage.name
            teachers = [work / "probe" / t / "best.pt" for t in stage.teachers]
            cfg = _config(stage, data, run_dir, 2, {**common, "max_steps_per_epoch": probe_steps}, teachers)
            t0 = clock()
            log(f"probe {stage.name}: {stage.model}, 2 epochs of {probe_steps} steps")
            try:
                with _probe_deadline(probe_limit - (clock() - start) if clock is time.monotonic else None,
                                     stage.name):
                    res = train(cfg, progress=False, quiet=True)
            except Exception as e:  # KeyboardInterrupt is not one: below
                if not isinstance(e, FerEdgeError):  # not a user's error (CUDA out of memory, say): its traceback
                    import traceback

                    log(traceback.format_exc().rstrip())
                why = str(e) if isinstance(e, FerEdgeError) else f"{type(e).__name__}: {e}"
                _remove_probes(work, stages, made)
                raise log.error(TrainingError(f"the probe of stage {stage.name!r} failed, so the round did not "
                                              f"start: {why} (its probe runs were removed: the same command can "
                                              "run again)")) from e
            last = res.history[-1]
            ips = float(last["images_per_second"])
            epoch_s = (images_per_epoch / max(ips, 1e-6) + float(last.get("val_seconds") or 0.0) + EPOCH_OVERHEAD_S)
            entries[stage.name]["probe"] = {
                "images_per_second": ips, "val_seconds": last.get("val_seconds"),
                "estimated_epoch_seconds": round(epoch_s * ESTIMATE_MARGIN, 2), "seconds": round(clock() - t0, 1),
            }
        if clock() - start > probe_limit:
            raise _ProbeOverrun()
        save_summary()
        probing = False

        # 2. run the stages in order
        done: set[str] = set()
        for i, stage in enumerate(stages):
            entry = entries[stage.name]
            missing = [t for t in stage.teachers if t not in done]
            finished = [t for t in stage.teachers if t in done]
            if missing and not finished:
                entry["status"] = (f"skipped: its teacher{'s' if len(missing) > 1 else ''} "
                                   f"{', '.join(map(repr, missing))} did not finish")
                save_summary()
                continue
            if missing:  # a one-shot round: the teachers that finished still teach (their ensemble, smaller)
                entry["note"] = (f"its teacher{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                                 f"did not finish: distilled from {', '.join(map(repr, finished))}"
                                 + (" and the extra teachers" if stage.extra_teachers else "") + " only")
                log(f"{stage.name}: {entry['note']}")
            left = max(0.0, budget_s - (clock() - start))  # the probe (or a long stage) may have spent it all
            alloc = left * stage.share / sum(s.share for s in stages[i:])
            per_epoch = entry["probe"]["estimated_epoch_seconds"]
            epochs = min(stage.max_epochs, int(alloc // per_epoch))
            entry.update(allotted_seconds=round(alloc, 1))
            if epochs < 1:
                if left <= 0:
                    spent = True
                    entry["status"] = "skipped: the budget was spent before this stage could run"
                else:
                    entry["status"] = "skipped: " + _too_short(alloc, per_epoch)
                log(f"{stage.name}: {entry['status']}")
                save_summary()
                continue
            run_dir = work / stage.name
            cfg = _config(stage, data, run_dir, epochs, common, [work / t / "best.pt" for t in finished])
            entry.update(status="running", epochs_planned=epochs, command=cfg.command())
            save_summary()
            log(f"{stage.name}: {epochs} epochs (about {epochs * per_epoch:.0f} s of {alloc:.0f} s allotted)\n"
                f"  {entry['command']}")
            current, t0 = (stage, run_dir), clock()
            started.append(stage.name)
            try:
                res = train(cfg, progress=progress,
                            resume_hint=f"to continue it, rerun its `fer-edge train` command (stage {stage.name!r} "
                                        f"in {out / 'summary.json'}) with --resume added: {entry['command']} --resume")
            except Exception as e:  # KeyboardInterrupt is not one: it stops the round, below
                if isinstance(e, FerEdgeError):
                    why = str(e)
                else:  # not a user's error: say what it was, with its traceback in the log
                    import traceback

                    why = f"{type(e).__name__}: {e}"
                    log(traceback.format_exc().rstrip())
                kept = try_keep(stage, run_dir)
                entry.update(status=f"failed: {why}" + (f"; {kept}" if kept else ""), seconds=round(clock() - t0, 1))
                failures.append(f"{stage.name}: {why}")
                current = None
                save_summary()
                continue
            current = None
            entry.update(status="done", epochs_run=res.epochs_run, best_accuracy=res.best_accuracy,
                         best_epoch=res.best_epoch, seconds=round(clock() - t0, 1))
            done.add(stage.name)  # its best.pt in WORK teaches its students even if keeping it in OUT fails
            kept = try_keep(stage, run_dir)
            if kept:
                entry["status"] = f"failed: {kept} (its training finished)"
                failures.append(f"{stage.name}: {kept}")
            save_summary()
            log(f"{stage.name}: best validation accuracy {res.best_accuracy:.4f} at epoch {res.best_epoch} "
                f"of {res.epochs_run}, {entry['seconds']:.0f} s")
    except _ProbeOverrun as e:  # the round did not start: its probe runs go, as a failed probe's do
        _remove_probes(work, stages, made)
        raise log.error(TrainingError(
            f"the probe reached its limit of {_seconds(probe_limit)} ({PROBE_SHARE:.0%} of the {_seconds(budget_s)} "
            f"budget) at {_seconds(clock() - start)}" + (f", with stage {e.args[0]!r} still to probe" if e.args else "")
            + ", so the round did not start: give it a larger --budget-minutes or fewer --probe-steps (its probe "
            "runs were removed: the same command can run again)")) from None
    except KeyboardInterrupt:
        if probing:  # the round did not start: its probe runs go, so that the same command can run again
            _remove_probes(work, stages, made)  # and OUT and WORK, if the round made them and they are empty
            gone = [str(f) for f in made if not f.exists()]
            log.interrupted(f"interrupted: during the probe, so no stage was trained and nothing was kept but the "
                            f"round's log ({log.path}); the probe runs were removed"
                            + (f", and {' and '.join(gone)}, which the round had made" if gone else "")
                            + ": the same command can run again")
            raise
        if current is not None:
            stage, run_dir = current
            entries[stage.name]["status"] = "interrupted (best.pt and history.csv as of the last finished epoch)"
            kept = try_keep(stage, run_dir)
            if kept:
                entries[stage.name]["status"] = f"interrupted; {kept}"
            elif "history" not in entries[stage.name]:
                entries[stage.name]["status"] = "interrupted before its first epoch finished: nothing of it was kept"
        for entry in entries.values():
            if entry["status"] == "pending":
                entry["status"] = "not run: the round was interrupted"
        save_summary()
        kept = [name for name, e in entries.items() if "history" in e or "checkpoint" in e or "checkpoint_parts" in e]
        log.interrupted(f"interrupted: {out} holds " + (f"what was kept ({', '.join(kept)}) and the summary" if kept
                                                        else "only the summary (the probe's figures): no stage kept "
                                                             "anything")
                        + f" ({out / 'summary.json'})")
        raise
    save_summary()
    if not started:
        # a stage skipped for its own allotment had some budget left; the others found it spent, or lacked a teacher
        short = any("allotted" in e["status"] for e in entries.values())
        why = ("the budget was spent before any stage could run" if spent and not short
               else "no stage had time for one epoch")
        raise log.error(TrainingError(f"no stage ran: {why} (the probe took {_probe_seconds(entries):.0f} s of the "
                                      f"{budget_s:.0f} s budget; every stage's reason is in {out / 'summary.json'})"))
    if failures:
        raise log.error(TrainingError("stages failed (the others ran and are kept in "
                                      f"{out}): " + "; ".join(failures)))
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} round finished: {clock() - start:.0f} s of the "
              f"{budget_s:g} s budget")
    return summary


def _probe_seconds(entries: dict) -> float:
    """The probe's seconds, all stages together."""
    return sum(e.get("probe", {}).get("seconds", 0.0) for e in entries.values())


def _too_short(alloc: float, per_epoch: float) -> str:
    """Why ``alloc`` seconds (less than ``per_epoch``) do not hold an epoch, with as many decimals as it takes for
    the two figures to differ (``0.96 s allotted, an epoch takes about 1.0 s``, not ``1 s ... about 1 s``)."""
    for digits in range(3):
        if f"{alloc:.{digits}f}" != f"{per_epoch:.{digits}f}":
            break
    return f"{alloc:.{digits}f} s allotted, an epoch takes about {per_epoch:.{digits}f} s"


def build_stages(teacher_model: str | Sequence[str], n_teachers: int, teacher_max_epochs: int,
                 extra_teachers: list[str], nano_teacher: str, students: str, shares: tuple[float, float, float],
                 batch_size: int, lr_scale: str, seed: int = 0,
                 teacher_options: dict | None = None) -> tuple[Stage, ...]:
    """The command line's stage table: ``n_teachers`` teachers of each model in ``teacher_model`` (one name or
    several: an ensemble of different architectures), named ``teacher``, ``teacher2``, ... in that order, seeds
    counted up from the round's, sharing the teacher share equally; then small and nano. ``teacher_options``
    (from ``--teacher-set``) replace every teacher's options as given, after LR scaling."""
    from fer_edge.weights import resolve_checkpoint

    teacher, small, nano = DEFAULT_STAGES
    t_share, s_share, n_share = shares
    models = [teacher_model] if isinstance(teacher_model, str) else list(teacher_model)
    kinds = [m for m in models for _ in range(n_teachers)]
    names = ["teacher"] + [f"teacher{i}" for i in range(2, len(kinds) + 1)]
    teachers = [replace(teacher, name=name, model=model, share=t_share / len(kinds),
                        max_epochs=teacher_max_epochs,
                        options={**teacher.options, **({"seed": seed + i} if i else {})})
                for i, (name, model) in enumerate(zip(names, kinds))]
    extra = tuple(str(_as_typed(resolve_checkpoint(t))) for t in extra_teachers)
    # a teacher named twice (--extra-teacher small twice, or small and its path) is refused, as eval and soup
    # refuse an ensemble member given twice: the students' ensemble would only weight that member twice
    # (by name, path or a byte-identical copy: the trainer's own check, named for this option)
    from fer_edge.training.teachers import repeated_teachers

    problems = [p.replace("--distill", "--extra-teacher", 1) for p in repeated_teachers(list(extra_teachers))]
    same_model = _repeated(kinds)
    if (teacher_options or {}).get("seed") is not None and same_model:
        # the teachers of one model differ only by their seeds, which --teacher-set seed= makes one
        problems.append(f"--teacher-set seed={teacher_options['seed']} gives every teacher that seed, so the "
                        f"teachers of {', '.join(same_model)} would be the same run (the students' ensemble would "
                        "only weight that member twice): leave the seed to the round (the teachers take --seed, "
                        "--seed+1, ...), or train one teacher of each model")
    if problems:
        raise TrainingError("; ".join(problems))
    small = replace(small, teachers=tuple(names), extra_teachers=extra, share=s_share)
    nano = replace(nano, teachers=tuple(names) if nano_teacher == "teacher" else ("small",),
                   extra_teachers=extra if nano_teacher == "teacher" else (), share=n_share)
    if students == "finetune":
        small, nano = finetune_stage(small, "small"), finetune_stage(nano, "nano")
    scaled = [scale_lr(st, batch_size, lr_scale) for st in (*teachers, small, nano)]
    for i in range(len(teachers)):
        scaled[i] = replace(scaled[i], options={**scaled[i].options, **(teacher_options or {})})
    return tuple(scaled)


def option_problems(budget_s: float, parts_bytes: int, work: Path, out: Path, probe_steps: int = 1,
                    data: str | Path | None = None) -> list[str]:
    """The round's own options checked (not the stages'), one phrase per problem: a budget that is not a finite,
    positive number, parts too small to hold anything, ``--out`` or ``--work`` that is a file, or that lies in the
    image folder ``data`` (:func:`_inside_data`)."""
    from fer_edge.checkpoint import part_limit_problems
    from fer_edge.utils import check_writable_dir

    problems = []
    if isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)):
        problems.append(f"the budget must be a number of seconds, not {budget_s!r}")
    elif not math.isfinite(budget_s) or budget_s <= 0:
        problems.append(f"--budget-minutes must be a finite, positive number, not {budget_s / 60:g}")
    if parts_bytes:
        problems += [f"--teacher-parts-mb {parts_bytes / 2**20:g}: {p} (0 keeps the teacher in --work only)"
                     for p in part_limit_problems(parts_bytes)]
    if probe_steps < 1:
        problems.append(f"--probe-steps must be at least 1, not {probe_steps}")
    for path, option in ((work, "--work"), (out, "--out")):
        try:
            check_writable_dir(path, option, TrainingError)
        except TrainingError as e:
            problems.append(str(e))
        if data is not None and _inside_data(path, data):
            problems.append(f"{option} {path} lies inside --data {data}: the round would write into the data set (a "
                            f"folder in a split is an unknown class folder to its loader); choose another {option}, "
                            "outside the data")
    return problems


def _inside_data(path: str | Path, data: str | Path) -> bool:
    """Whether ``path`` is the image folder ``data`` or lies under it (compared resolved; False for a CSV, or a
    folder holding one, and for data that is not there).

    Checked with the usage checks, before anything is loaded. Before, a ``--work`` in a split folder
    (``DATA/train/round``) was refused only by the loader, as an unknown class folder, once the round had read the
    data and trained a probe (the loader met the probe folder the round had made there); one beside the splits
    (``DATA/round``) was not refused at all, and the run folders became a split of the data set.
    """
    from fer_edge.data.loading import folder_csv
    from fer_edge.errors import DataError

    root = Path(data).expanduser()
    try:  # the loader's own test (FER2013.csv in any case): such a folder is read as the CSV, not as image folders
        if not root.is_dir() or folder_csv(root) is not None:
            return False
    except DataError:  # two CSVs differing only in case: the data is refused when loaded, saying so
        return False
    try:
        root, p = root.resolve(), _resolved(path)
    except (OSError, RuntimeError):  # a path that cannot be resolved (a symlink loop): reported elsewhere
        return False
    return p == root or root in p.parents


def _parts_problems(stage: Stage, parts_bytes: int) -> list[str]:
    """What keeps ``stage``'s checkpoint, with freshly built weights of its model, from fitting parts of
    ``parts_bytes`` (its largest tensor), before the stage is trained; [] when it fits or cannot be judged yet."""
    from fer_edge.checkpoint import part_limit_problems
    from fer_edge.constants import LABELS
    from fer_edge.models import create_model

    try:
        model = create_model(stage.model, num_classes=len(LABELS), **(stage.options.get("model_kwargs") or {}))
    except Exception:  # an unknown model or bad kwargs: reported on their own
        return []
    return [f"stage {stage.name!r}: --teacher-parts-mb {parts_bytes / 2**20:g} cannot send its {stage.model} "
            f"checkpoint: {p}" for p in part_limit_problems(parts_bytes, model.state_dict())]


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _written_by_round(path: str | Path, stages, work: Path, out: Path, parts_bytes: int) -> str:
    """What the round writes at ``path`` (compared as resolved paths), as a phrase; "" when it writes nothing
    there: ``OUT``'s summary, log, histories, kept checkpoints and checkpoint parts, and the stages' run folders and
    probe runs in ``WORK`` (with everything under them)."""
    import re

    p, o, w = _resolved(path), _resolved(out), _resolved(work)
    if p == o / "summary.json":
        return "the round's summary"
    if p == o / LOG_NAME:
        return "the round's log"
    for s in stages:
        if p == o / f"{s.name}_history.csv":
            return f"stage {s.name!r}'s kept history"
        if s.keep_checkpoint and p == o / f"{s.name}.pt":
            return f"stage {s.name!r}'s kept checkpoint"
        if (parts_bytes and not s.keep_checkpoint and p.parent == o
                and re.fullmatch(re.escape(s.name) + r"\.part\d+\.pt", p.name)):
            return f"a part of stage {s.name!r}'s checkpoint"
        for folder, what in ((w / s.name, "run folder"), (w / "probe" / s.name, "probe run")):
            if p == folder or folder in p.parents:
                return f"stage {s.name!r}'s {what} {folder}"
    return ""


def _kept_files(out: Path, stages) -> list[str]:
    """The files in ``out`` that a round keeps there (its summary, and any stage's history, checkpoint or
    checkpoint parts), by name; not the round's log, which each round into ``out`` appends to (a round that did not
    start leaves it, and the same command runs again).

    Before, a second round into the same ``--out`` replaced the first's files one by one as its stages finished,
    and an interrupted one left the first round's ``nano.pt`` beside a summary that said nano was not run."""
    import re

    if not out.is_dir():
        return []
    names = ({"summary.json"} | {f"{s.name}_history.csv" for s in stages}
             | {f"{s.name}.pt" for s in stages if s.keep_checkpoint})
    parts = re.compile("|".join(re.escape(s.name) + r"\.part\d+\.pt" for s in stages if not s.keep_checkpoint))
    try:
        return sorted(f.name for f in out.iterdir() if f.name in names or parts.fullmatch(f.name))
    except OSError:  # unreadable: check_writable_dir reports what it can
        return []


def _extra_teacher_problem(path: str) -> str:
    """Why the checkpoint ``path`` cannot teach a fer-edge student ("" when it can): unreadable, or other labels."""
    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.constants import LABELS
    from fer_edge.errors import CheckpointError

    if not Path(path).is_file():
        return f"extra teacher {path} is not a file"
    try:
        ck = load_checkpoint(path)
    except CheckpointError as e:
        return f"extra teacher {e}"
    if list(ck.labels) != list(LABELS):
        return f"extra teacher {path}: its labels {list(ck.labels)} differ from fer-edge's {list(LABELS)}"
    return ""


def _preflight(stages, data: str, common: dict, work: Path, out: Path, *, budget_s: float, parts_bytes: int,
               probe_steps: int) -> None:
    """The round's options, and every stage's options, model, run directory and input files, checked before the
    budget starts to be spent; all problems at once. An input (the data, an extra teacher, an ``init``
    checkpoint) at a path the round writes is refused: the round would overwrite it, or read its own output."""
    from fer_edge.models import list_models
    from fer_edge.training.trainer import validate_config

    problems = option_problems(budget_s, parts_bytes, work, out, probe_steps, data)
    taken = [str(d) for s in stages for d in (work / "probe" / s.name, work / s.name) if d.exists()]
    if taken:
        problems.append(f"{', '.join(taken)} already exist: fer-edge train never overwrites a run, so give the "
                        "round a fresh --work")
    kept = _kept_files(out, stages)
    if kept:
        problems.append(f"--out {out} already holds a round's files ({', '.join(kept)}): the round would overwrite "
                        "them, and mix its own with those it does not replace; choose another --out, or move them")
    parts_ok = not any(p.startswith("--teacher-parts-mb") for p in problems)
    inputs = [(f"--data {data}", data)] + [(f"stage {s.name!r}: --init {s.options['init']}", s.options["init"])
                                          for s in stages
                                   if isinstance(s.options.get("init"), (str, Path)) and s.options["init"]]
    checked: dict[str, str] = {}  # an extra teacher shared by several stages is loaded and reported once
    for s in stages:
        for t in s.extra_teachers:
            if t not in checked:
                checked[t] = _extra_teacher_problem(t)
                inputs.append((f"extra teacher {t}", t))
                if checked[t]:
                    problems.append(f"stage {s.name!r}: {checked[t]}")
    for what, path in inputs:
        try:
            written = _written_by_round(path, stages, work, out, parts_bytes)
        except (OSError, RuntimeError):  # a path that cannot be resolved (a symlink loop): the load reports it
            written = ""
        if written:
            problems.append(f"{what} is where the round writes {written}: the round would overwrite it "
                            "or read its own output; move it, or choose another --out/--work")
    by_line: dict[str, list[str]] = {}  # a training option's problem -> the stages that have it
    for s in stages:
        known = s.model in list_models()
        if not known:
            problems.append(f"stage {s.name!r}: unknown model {s.model!r} (see `fer-edge models`)")
        elif parts_bytes and parts_ok and not s.keep_checkpoint:
            problems += _parts_problems(s, parts_bytes)
        try:
            validate_config(_config(s, data, Path(s.name), 1, common, [Path(f"{t}.pt") for t in s.teachers]))
        except TrainingError as e:
            text = str(e).removeprefix("bad training options:\n  ")
            for line in text.split("\n  "):
                if known or not line.startswith("--model: unknown model"):  # said once, above
                    by_line.setdefault(line, []).append(s.name)
    for line, names in by_line.items():  # one every stage has (a round-wide --batch-size 0) is said once
        problems += [line] if len(names) == len(stages) > 1 else [f"stage {n!r}: {line}" for n in names]
    from fer_edge.training.trainer import resolve_device

    for dev in dict.fromkeys([common.get("device", "auto")] + [s.options["device"] for s in stages
                                                               if s.options.get("device")]):
        try:  # the round's --device, and one a stage sets (--teacher-set device=cuda)
            resolve_device(dev)
        except TrainingError as e:
            problems.append(str(e))
    if problems:
        raise TrainingError("bad round:\n  " + "\n  ".join(problems))


def _absent_device(device: str, overrides: dict) -> bool:
    """Whether the round's ``--device`` or the teachers' (``--teacher-set device=...``) is a device this machine
    lacks (``cuda`` without a GPU); a name that is no device at all (``gpu``, a typo) is not: a usage error."""
    from fer_edge.training.trainer import resolve_device

    for dev in dict.fromkeys([device, overrides.get("device") or device]):
        if dev not in TRAIN_DEVICES:  # (the choices --device takes)
            continue
        try:
            resolve_device(dev)
        except TrainingError:
            return True
    return False


def _fp16_on_cpu(amp: str, device: str, overrides: dict | None = None) -> str:
    """Why ``--amp fp16`` cannot run on ``--device`` ("" when it can, or when the device is not here: the preflight
    says that). ``overrides``: the teachers' ``--teacher-set`` items, which replace either for the teachers.

    ``fer-edge train`` only warns: on a CPU, fp16 autocast is emulated half precision, many times slower than
    ``--amp bf16`` (on CPUs with native bf16) or ``--amp off``. A round sizes its stages from the probe's
    throughput, so it would spend its budget on a few slow epochs; refused before anything runs.
    """
    said = {"amp": f"--amp {amp}", "device": f"--device {device}"}
    for key, value in (overrides or {}).items():
        if key in said:
            said[key] = f"--teacher-set {key}={value}"
    amp, device = str((overrides or {}).get("amp", amp)), str((overrides or {}).get("device", device))
    if amp != "fp16" or device not in ("cpu", "auto"):
        return ""
    if device == "auto":
        from fer_edge.training.trainer import resolve_device

        if resolve_device("auto").type != "cpu":
            return ""
    where = said["device"] + ("" if device == "cpu" else " found no GPU, so it runs on the CPU")
    fix = ("--amp bf16 or --amp off (or leave --amp out: auto picks between them)" if said["amp"].startswith("--amp")
           else "--teacher-set amp=bf16 or amp=off")
    return (f"{said['amp']} with {where}: fp16 autocast on a CPU is emulated, many times slower than bf16 or no "
            f"autocast, and the round would size its stages on that speed; use {fix}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fer_edge.training.distill_round",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="FER2013 CSV or image-folder root")
    ap.add_argument("--work", type=Path, required=True, help="run directories (one per stage, plus probe/)")
    ap.add_argument("--out", type=Path, required=True, help="what to keep: summary.json, histories, students")
    ap.add_argument("--budget-minutes", type=float, required=True,
                    help="wall-clock budget for the whole round (a positive number)")
    ap.add_argument("--teacher", action="append", default=None, metavar="MODEL",
                    help=f"teacher model (registered name; default {DEFAULT_STAGES[0].model}); repeat for an "
                         "ensemble of different architectures, e.g. --teacher resnet18 --teacher enhanced_cnn")
    ap.add_argument("--teachers", type=int, default=1,
                    help="train this many teachers of each --teacher model, with seeds --seed, --seed+1, ..., each "
                         "taking an equal part of the teacher share; the students distil from their ensemble")
    ap.add_argument("--teacher-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a TrainConfig option for every teacher, e.g. cutmix=1.0 or weight_decay=0.1 (repeatable; "
                         "taken as given, after --lr-scale)")
    ap.add_argument("--teacher-max-epochs", type=int, default=DEFAULT_STAGES[0].max_epochs,
                    help="cap on each teacher's epochs (default %(default)s)")
    ap.add_argument("--extra-teacher", action="append", default=[], metavar="CHECKPOINT",
                    help="a shipped name (small, nano) or checkpoint path added to both students' teacher ensemble; "
                         "repeatable")
    ap.add_argument("--nano-teacher", default="teacher", choices=["teacher", "small"],
                    help="nano distils from the teachers, or from the small student (a teaching assistant)")
    ap.add_argument("--students", default="scratch", choices=["scratch", "finetune"],
                    help="students from scratch, or fine-tunes of the shipped small and nano weights (--init)")
    ap.add_argument("--device", default="auto", choices=list(TRAIN_DEVICES))
    ap.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"],
                    help="autocast dtype for every stage (auto: fp16 on CUDA, bf16 on CPUs with native bf16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--probe-steps", type=int, default=20)
    ap.add_argument("--max-steps-per-epoch", type=int, default=0, help="cap steps per epoch (smoke runs)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--shares", type=_shares, default=tuple(s.share for s in DEFAULT_STAGES),
                    help="the budget's split as teacher,small,nano (default %(default)s; each stage gets its share "
                         "of what is left when it starts)")
    ap.add_argument("--lr-scale", default="none", choices=list(LR_SCALE_POWER),
                    help=f"scale every stage's peak LR from batch {REFERENCE_BATCH} to --batch-size")
    ap.add_argument("--teacher-parts-mb", type=float, default=0.0,
                    help="also send the teacher to --out, as float16 parts of at most this many MiB "
                         "(join them with `python -m fer_edge.checkpoint join`); 0: keep it in --work only. "
                         "Checked before any training: the teacher's largest tensor must fit a part "
                         "(resnet18: at least 4.57 MiB)")
    args = ap.parse_args(argv)
    # torch (and numpy, which it imports) first: torch's import swallows an exception raised while numpy is being
    # imported, so a SIGTERM turned into KeyboardInterrupt there was lost, or left numpy half-imported
    import torch  # noqa: F401

    import fer_edge.models  # noqa: F401
    from fer_edge.utils import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # SIGTERM (a timeout's) as Ctrl-C: the round's interrupt path, not a silent end
            return _main(args)
    except KeyboardInterrupt:  # one that came before the round started (its checks); the round's own say more
        print("interrupted: before the round started (while its options were checked); nothing was written",
              file=sys.stderr)
        return 130


def _main(args: argparse.Namespace) -> int:
    fp16 = _fp16_on_cpu(args.amp, args.device)
    if fp16:  # a usage error on its own, as argparse's are (exit 2)
        print(f"error: {fp16}", file=sys.stderr)
        return 2
    # the options checked before anything else, all problems at once (the stages' own, by run_round, next)
    problems = []
    if not Path(args.data).exists():
        problems.append(f"--data {args.data} does not exist")
    if args.teachers < 1:
        problems.append(f"--teachers must be at least 1, not {args.teachers}")
    parts_bytes = 0
    if not math.isfinite(args.teacher_parts_mb) or args.teacher_parts_mb < 0:
        problems.append(f"--teacher-parts-mb must be 0 (keep the teacher in --work only) or a positive number of "
                        f"MiB, not {args.teacher_parts_mb:g}")
    else:
        parts_bytes = int(args.teacher_parts_mb * 1024 * 1024)
        if args.teacher_parts_mb > 0 and parts_bytes == 0:
            parts_bytes = 1  # a positive size too small to count in bytes is refused as such, not taken as 0
    # then the stages' (models, extra teachers, --teacher-set, training options) and the device: every problem in
    # one message, not one per run of the command
    stages, overrides = None, {}
    try:
        overrides = parse_overrides(args.teacher_set)
    except TrainingError as e:
        problems.append(str(e))
    if "amp" in overrides or "device" in overrides:  # the teachers' own: as --amp fp16 on a CPU above
        if fp16 := _fp16_on_cpu(args.amp, args.device, overrides):
            problems.append(fp16)
    from fer_edge.weights import resolve_checkpoint

    extra = []  # each --extra-teacher on its own: one that is missing does not hide the others' problems
    for t in args.extra_teacher:
        try:
            resolve_checkpoint(t)
            extra.append(t)
        except FerEdgeError as e:
            problems.append(f"--extra-teacher {e}")
    try:  # (with --teachers below 1, reported above, the rest is still checked with one teacher)
        stages = build_stages(args.teacher or [DEFAULT_STAGES[0].model], max(1, args.teachers),
                              args.teacher_max_epochs, extra, args.nano_teacher, args.students, args.shares,
                              args.batch_size, args.lr_scale, args.seed, overrides)
    except FerEdgeError as e:
        problems.append(str(e))
    if stages is None:
        problems += option_problems(args.budget_minutes * 60, parts_bytes, args.work, args.out, args.probe_steps,
                                    args.data)
        try:  # (the preflight checks the device otherwise)
            from fer_edge.training.trainer import resolve_device

            resolve_device(args.device)
        except TrainingError as e:
            problems.append(str(e))
    else:
        try:
            _preflight(stages, args.data, _common(args.seed, args.batch_size, args.device, args.amp, args.threads,
                                                  args.max_steps_per_epoch),
                       args.work, args.out, budget_s=args.budget_minutes * 60, parts_bytes=parts_bytes,
                       probe_steps=args.probe_steps)
        except TrainingError as e:
            problems += str(e).removeprefix("bad round:\n  ").split("\n  ")
    if problems:
        print("error: bad options:\n  " + "\n  ".join(dict.fromkeys(problems)), file=sys.stderr)
        # a usage error (exit 2), as argparse's own and train's list of bad options are; but a device this machine
        # lacks (--device cuda without a GPU) is no typo: exit 1, as fer-edge train's
        return 1 if _absent_device(args.device, overrides) else 2
    try:
        run_round(args.data, args.work, args.out, args.budget_minutes * 60, stages=stages, device=args.device,
                  amp=args.amp, seed=args.seed, parts_bytes=parts_bytes,
                  batch_size=args.batch_size, probe_steps=args.probe_steps,
                  max_steps_per_epoch=args.max_steps_per_epoch, threads=args.threads,
                  progress=sys.stderr.isatty(), checked=True,  # the preflight ran above, with these arguments
                  on_interrupt=lambda m: print(m, file=sys.stderr))  # one `interrupted:` line, as every command's
    except FerEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:  # the round's last lines, still buffered, to a stdout whose reader went away: as the log does
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            from fer_edge.cli.common import _stdout_to_devnull

            _stdout_to_devnull()
    return 0


if __name__ == "__main__":
    from fer_edge.utils import command_environment

    command_environment()  # as the fer-edge command: ONNX Runtime's telemetry off (a user's setting wins)
    sys.exit(main())
