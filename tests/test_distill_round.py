"""The time-boxed distillation round (fer_edge.training.distill_round) and TrainConfig.command()."""
from __future__ import annotations

import csv
import json
import shlex
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

import fer_edge.training as training
from fer_edge.checkpoint import load_checkpoint
from fer_edge.cli import app
from fer_edge.errors import TrainingError
from fer_edge.training import TrainConfig
from fer_edge.training.distill_round import Stage, check_stages, main, run_round

TINY = (
    Stage("teacher", "simple_cnn", 0.5, 2, keep_checkpoint=False, options=dict(lr=3e-3, augment="light")),
    Stage("student", "fer_nano", 0.5, 2, teachers=("teacher",),
          options=dict(lr=3e-3, augment="light", distill_alpha=0.7, distill_tta=True)),
)
COMMON = dict(device="cpu", batch_size=32, probe_steps=2, max_steps_per_epoch=3)


def test_round_trains_teacher_then_student_and_keeps_each(synthetic_folder, tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    summary = run_round(synthetic_folder, work, out, budget_s=600, stages=TINY, log=lambda m: None, **COMMON)

    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    teacher, student = summary["stages"]
    for entry in (teacher, student):
        assert entry["status"] == "done"
        assert entry["epochs_run"] == entry["epochs_planned"] == 2  # capped at max_epochs: the budget is ample
        assert entry["probe"]["images_per_second"] > 0 and entry["probe"]["estimated_epoch_seconds"] > 0
        with open(out / entry["history"]) as f:
            assert len(list(csv.DictReader(f))) == 2
    assert "checkpoint" not in teacher and not (out / "teacher.pt").exists()  # keep_checkpoint=False
    ck = load_checkpoint(out / student["checkpoint"])
    assert ck.model_name == "fer_nano"
    assert ck.train_config["distill"] == [str(work / "teacher" / "best.pt")]
    assert ck.metrics["val_accuracy"] == pytest.approx(student["best_accuracy"])
    assert student["command"].startswith("fer-edge train ") and "--distill-tta" in student["command"]


def test_a_teacher_too_large_to_keep_is_sent_in_parts_that_join_again(synthetic_folder, tmp_path):
    from fer_edge.checkpoint import join_checkpoint

    work, out = tmp_path / "work", tmp_path / "out"
    limit = 680_000  # simple_cnn's float16 weights (640 KB, one tensor 590 KB) need two parts
    summary = run_round(synthetic_folder, work, out, budget_s=600, stages=TINY[:1], log=lambda m: None,
                        parts_bytes=limit, **COMMON)
    names = summary["stages"][0]["checkpoint_parts"]
    assert len(names) >= 2 and all((out / n).stat().st_size <= limit for n in names)
    joined = load_checkpoint(join_checkpoint([out / n for n in names], tmp_path / "teacher.pt"))
    original = load_checkpoint(work / "teacher" / "best.pt")
    assert (joined.model_name, joined.metrics) == (original.model_name, original.metrics)
    for k, v in original.state_dict.items():
        assert joined.state_dict[k].dtype == v.dtype
        assert torch.allclose(joined.state_dict[k].float(), v.float(), rtol=1e-3, atol=1e-4), k


def test_stage_without_time_for_an_epoch_is_skipped_with_its_pupils(synthetic_folder, tmp_path):
    # a clock that never moves: the whole (tiny) budget is left when the teacher starts, yet short of an epoch
    with pytest.raises(TrainingError, match="no stage ran: no stage had time for one epoch"):
        run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=1e-3, stages=TINY,
                  log=lambda m: None, clock=lambda: 0.0, **COMMON)
    teacher, student = json.loads((tmp_path / "o" / "summary.json").read_text())["stages"]
    assert teacher["status"].startswith("skipped: 0 s allotted,") and "an epoch takes about" in teacher["status"]
    assert student["status"] == "skipped: its teacher 'teacher' did not finish"
    assert not (tmp_path / "w" / "teacher").exists()


def test_a_probe_that_reaches_its_share_of_the_budget_stops_the_round(synthetic_folder, tmp_path, monkeypatch,
                                                                       capsys):
    """Unbounded, a slow probe could spend the whole budget (and the stages found it spent) or nearly all of it
    (a teacher of an epoch or two)."""
    import signal
    import time

    from fer_edge.training.distill_round import PROBE_SHARE

    assert PROBE_SHARE == 0.25
    real = training.train
    probed = []

    def slow_teacher(cfg, **kw):  # the teacher's probe would take a minute
        probed.append(cfg.out)
        if cfg.out.endswith("probe/teacher"):
            time.sleep(60)
        return real(cfg, **kw)

    monkeypatch.setattr(training, "train", slow_teacher)
    work, out = tmp_path / "w", tmp_path / "o"
    handler = signal.getsignal(signal.SIGALRM)
    t0 = time.monotonic()
    with pytest.raises(TrainingError, match=r"the probe reached its limit of 2\.5 s \(25% of the 10 s budget\) at "
                                            r"\d+\.\d s, with stage 'teacher' still to probe, so the round did not "
                                            r"start: give it a larger --budget-minutes or fewer --probe-steps"):
        run_round(synthetic_folder, work, out, budget_s=10, stages=TINY, log=lambda m: None, **COMMON)
    assert time.monotonic() - t0 < 8  # stopped at its limit, not when the sleep ended
    assert signal.getsignal(signal.SIGALRM) == handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert probed == [str(work / "probe" / "teacher")]
    assert not work.exists() and not (out / "summary.json").exists()  # as a failed probe: the command can run again
    assert "error: the probe reached its limit" in (out / "distill_round.log").read_text()
    # a budget spent before the first probe: no stage is probed
    probed.clear()
    assert main(["--data", str(synthetic_folder), "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2"),
                 "--budget-minutes", "0.00001", "--teacher", "simple_cnn", "--device", "cpu", "--batch-size", "32",
                 "--probe-steps", "1", "--max-steps-per-epoch", "1"]) == 1
    err = capsys.readouterr().err
    assert "budget) at " in err and "with stage 'teacher' still to probe, so the round did not start" in err, err
    assert probed == []


def test_the_probe_limit_is_checked_on_the_callers_clock_after_each_probe(synthetic_folder, tmp_path, monkeypatch):
    """A caller's clock (a test's) gets no timer: the round reads it after each probe instead."""
    now = [0.0]

    def probe_of_100_s(cfg, **kw):
        now[0] += 100
        return _QuickRun()

    monkeypatch.setattr(training, "train", probe_of_100_s)
    with pytest.raises(TrainingError, match=r"limit of 150 s \(25% of the 600 s budget\) at 200 s, so the round did "
                                            "not start"):  # after the student's probe, the last
        run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=600, stages=TINY, log=lambda m: None,
                  clock=lambda: now[0], **COMMON)
    now[0] = 0.0
    stages = TINY + (Stage("other", "simple_cnn", 0.5, 1, options=dict(augment="light")),)
    with pytest.raises(TrainingError, match="at 200 s, with stage 'other' still to probe"):
        run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=600, stages=stages, log=lambda m: None,
                  clock=lambda: now[0], **COMMON)


def test_a_budget_a_stage_spent_skips_the_later_ones_at_zero_seconds(synthetic_folder, tmp_path, monkeypatch):
    now = [0.0]

    def teacher_takes_it_all(cfg, **kw):
        if cfg.out.endswith("teacher") and "probe" not in cfg.out:
            now[0] += 1000
        return _QuickRun()

    monkeypatch.setattr(training, "train", teacher_takes_it_all)
    stages = TINY + (Stage("other", "simple_cnn", 0.5, 1, options=dict(augment="light")),)
    summary = run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=600, stages=stages,
                        log=lambda m: None, clock=lambda: now[0], **COMMON)
    entries = summary["stages"]
    assert [e["status"] for e in entries] == ["done", "skipped: the budget was spent before this stage could run",
                                              "skipped: the budget was spent before this stage could run"]
    assert entries[1]["allotted_seconds"] == entries[2]["allotted_seconds"] == 0  # not negative


def test_a_skip_shows_the_decimals_that_tell_the_allotment_from_the_epoch():
    from fer_edge.training.distill_round import _too_short

    assert _too_short(0.5, 2.3) == "0 s allotted, an epoch takes about 2 s"
    assert _too_short(1.2, 1.4) == "1.2 s allotted, an epoch takes about 1.4 s"  # not "1 s ..., about 1 s"
    assert _too_short(0.96, 1.0) == "0.96 s allotted, an epoch takes about 1.00 s"


def test_a_failed_stage_is_reported_after_the_others_are_kept(synthetic_folder, tmp_path, monkeypatch):
    stages = TINY + (Stage("other", "simple_cnn", 0.5, 1, options=dict(augment="light")),)
    real = training.train

    def flaky(cfg, **kw):
        if cfg.out.endswith("student") and "probe" not in cfg.out:
            raise TrainingError("disk full")
        return real(cfg, **kw)

    monkeypatch.setattr(training, "train", flaky)
    with pytest.raises(TrainingError, match="student: disk full") as e:
        run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=600, stages=stages,
                  log=lambda m: None, **COMMON)
    assert "teacher" not in str(e.value) and "other" not in str(e.value).split("kept in")[1]
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["done", "failed: disk full", "done"]


def test_interrupt_keeps_the_running_stage_and_marks_the_rest(synthetic_folder, tmp_path, monkeypatch):
    real = training.train

    def interrupted(cfg, **kw):
        if cfg.out.endswith("student") and "probe" not in cfg.out:
            real(cfg, **kw)  # it finishes its epochs, then the interrupt arrives
            raise KeyboardInterrupt
        return real(cfg, **kw)

    monkeypatch.setattr(training, "train", interrupted)
    stages = TINY + (Stage("after", "simple_cnn", 0.5, 1, options=dict(augment="light")),)
    with pytest.raises(KeyboardInterrupt):
        run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=600, stages=stages,
                  log=lambda m: None, **COMMON)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    statuses = [s["status"] for s in summary["stages"]]
    assert statuses[0] == "done" and statuses[1].startswith("interrupted") and statuses[2].startswith("not run")
    assert (tmp_path / "o" / "student.pt").is_file() and (tmp_path / "o" / "student_history.csv").is_file()


def test_bad_stage_tables_and_options_fail_before_any_training(synthetic_folder, tmp_path):
    bad = (Stage("a", "simple_cnn", 0, 0, teachers=("b",), options=dict(epochs=3)),
           Stage("a", "simple_cnn", 1, 1))
    with pytest.raises(TrainingError) as e:
        check_stages(bad)
    for part in ("used twice", "teacher 'b' is not an earlier stage", "share must be positive",
                 "max_epochs must be at least 1", "reserved options ['epochs']"):
        assert part in str(e.value)
    wrong = (Stage("t", "no_such_net", 1, 1), Stage("s", "simple_cnn", 1, 1, teachers=("t",), options=dict(lr=-1)))
    with pytest.raises(TrainingError) as e:
        run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=60, stages=wrong, **COMMON)
    assert "unknown model 'no_such_net'" in str(e.value) and "--lr must be positive" in str(e.value)
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()
    (tmp_path / "w" / "probe" / "teacher").mkdir(parents=True)  # a previous round's work
    with pytest.raises(TrainingError, match="already exist: .*give the round a fresh --work"):
        run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=60, stages=TINY, **COMMON)
    assert not (tmp_path / "o").exists()


def test_main_reports_missing_data_and_bad_teacher(tmp_path, synthetic_folder, capsys):
    assert main(["--data", str(tmp_path / "nope"), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                 "--budget-minutes", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--data", str(synthetic_folder), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                 "--budget-minutes", "1", "--teacher", "resnet19", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet19'" in err and err.count("resnet19") == 1  # said once, not twice
    # a device this machine lacks is no typo: exit 1, as fer-edge train's (regression QA: it became 2 with the list)
    import torch

    if not torch.cuda.is_available():
        for extra in (["--device", "cuda"], ["--device", "cpu", "--teacher-set", "device=cuda"]):
            assert main(["--data", str(synthetic_folder), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                         "--budget-minutes", "1", "--teacher", "simple_cnn", *extra]) == 1, extra
            assert "--device cuda: no CUDA device is available here" in capsys.readouterr().err
    for typo in ("gpu", "cpus"):  # a typo through --teacher-set is no absent device: a usage error (exit 2)
        assert main(["--data", str(synthetic_folder), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                     "--budget-minutes", "1", "--teacher", "simple_cnn", "--device", "cpu", "--teacher-set",
                     f"device={typo}"]) == 2, typo
        assert f"unknown device '{typo}'" in capsys.readouterr().err


@pytest.mark.parametrize("many", [True, False], ids=["many-options", "defaults"])
def test_command_runs_the_same_config(many, tmp_path, monkeypatch):
    for name in ("d.csv", "a.pt", "b c.pt", "i.pt"):
        (tmp_path / name).write_text(name)  # the CLI checks that these exist (two teachers: two files)
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(data="d.csv")
    if many:
        cfg = TrainConfig(data="d.csv", model="fer_nano", out="runs/x y", distill=["a.pt", "b c.pt"],
                          distill_tta=True, channels_last=False, model_kwargs={"widths": [8, 16]}, num_threads=2,
                          lr=1e-3, qat=True, augment="strong", ema=0.998, split="Training", init="i.pt",
                          cutmix=1.0, mix_prob=0.5, distill_targets="replay", distill_views=3,
                          distill_cache="runs/replay cache.pt")
    seen = []
    monkeypatch.setattr(training, "train", lambda c, **kw: seen.append(c) or _Result())
    argv = shlex.split(cfg.command())
    assert argv[:2] == ["fer-edge", "train"]
    r = CliRunner().invoke(app, argv[1:])
    assert r.exit_code == 0, r.output
    assert seen == [cfg]


def test_command_refuses_a_config_no_command_runs():
    with pytest.raises(TrainingError, match="val_every"):
        TrainConfig(data="d", val_every=2).command()


class _Result:
    best_accuracy, best_epoch, epochs_run, out_dir, stopped_early = 0.5, 1, 1, "runs/x", False


def test_main_runs_the_default_table_with_the_chosen_teachers(synthetic_folder, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("fer_edge.training.distill_round.run_round",
                        lambda *a, stages, **kw: seen.setdefault("stages", stages))
    assert main(["--data", str(synthetic_folder), "--work", "w", "--out", "o", "--budget-minutes", "1",
                 "--teacher", "enhanced_cnn", "--nano-teacher", "small"]) == 0
    teacher, small, nano = seen["stages"]
    assert (teacher.model, small.teachers, nano.teachers) == ("enhanced_cnn", ("teacher",), ("small",))
    check_stages(seen["stages"])


def test_finetune_students_start_from_the_shipped_weights(synthetic_folder, tmp_path, monkeypatch):
    from fer_edge.weights import resolve_checkpoint

    seen = {}
    monkeypatch.setattr("fer_edge.training.distill_round.run_round",
                        lambda *a, stages, amp, **kw: seen.update(stages=stages, amp=amp))
    assert main(["--data", str(synthetic_folder), "--work", "w", "--out", "o", "--budget-minutes", "1",
                 "--students", "finetune", "--amp", "bf16"]) == 0
    teacher, small, nano = seen["stages"]
    assert seen["amp"] == "bf16"
    assert "init" not in teacher.options
    for stage, name, lr in ((small, "small", 1e-3), (nano, "nano", 2e-3)):
        assert resolve_checkpoint(stage.options["init"]).resolve() == resolve_checkpoint(name).resolve()
        assert stage.options["lr"] == lr and stage.teachers == ("teacher",)
    # the students' other settings are the round's (distillation included)
    assert small.options["distill_alpha"] == 0.7 and small.options["augment"] == "strong"
    check_stages(seen["stages"])


def test_shares_and_lr_scaling_reach_the_stages(synthetic_folder, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr("fer_edge.training.distill_round.run_round",
                        lambda *a, stages, batch_size, **kw: seen.update(stages=stages, batch_size=batch_size))
    base = ["--data", str(synthetic_folder), "--work", "w", "--out", "o", "--budget-minutes", "1"]
    assert main(base + ["--shares", "0.6,0.25,0.15", "--batch-size", "512", "--lr-scale", "sqrt",
                        "--students", "finetune"]) == 0
    teacher, small, nano = seen["stages"]
    assert [s.share for s in seen["stages"]] == [0.6, 0.25, 0.15] and seen["batch_size"] == 512
    # sqrt(512 / 128) = 2 times the batch-128 LRs: the teacher's 1e-3, the fine-tunes' 1e-3 and 2e-3
    assert [s.options["lr"] for s in seen["stages"]] == pytest.approx([2e-3, 2e-3, 4e-3])
    assert main(base + ["--lr-scale", "none"]) == 0
    assert [s.options["lr"] for s in seen["stages"]] == pytest.approx([1e-3, 3e-3, 4e-3])
    for bad in ("0.5,0.5", "1,0,1", "a,b,c"):
        with pytest.raises(SystemExit) as e:
            main(base + ["--shares", bad])
        assert e.value.code == 2 and "three positive numbers" in capsys.readouterr().err


def test_round_runs_without_the_export_stack(synthetic_folder, tmp_path):
    """A GPU machine has torch but not openvino, nncf or coremltools: the round must not need them."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for m in ('openvino', 'nncf', 'coremltools', 'onnxruntime'):\n"
        "    sys.modules[m] = None  # importing any of them now fails\n"
        "from dataclasses import replace\n"
        "from fer_edge.training.distill_round import DEFAULT_STAGES, run_round\n"
        "stages = [replace(s, max_epochs=1) for s in DEFAULT_STAGES]\n"
        "stages[0] = replace(stages[0], model='simple_cnn')\n"
        f"run_round({str(synthetic_folder)!r}, 'w', 'o', 300, stages=stages, device='cpu', batch_size=32,"
        " probe_steps=1, max_steps_per_epoch=1)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["done", "done", "done"]
    assert (tmp_path / "o" / "small.pt").is_file() and (tmp_path / "o" / "nano.pt").is_file()


def test_students_distil_from_every_teacher_stage_and_the_extra_checkpoints(synthetic_folder, tmp_path):
    from fer_edge.weights import resolve_checkpoint

    work, out = tmp_path / "work", tmp_path / "out"
    extra = str(resolve_checkpoint("nano"))
    stages = (TINY[0], replace(TINY[0], name="teacher2", options={**TINY[0].options, "seed": 7}),
              replace(TINY[1], teachers=("teacher", "teacher2"), extra_teachers=(extra,)))
    summary = run_round(synthetic_folder, work, out, budget_s=600, stages=stages, log=lambda m: None, **COMMON)
    assert [s["status"] for s in summary["stages"]] == ["done"] * 3
    ck = load_checkpoint(out / summary["stages"][2]["checkpoint"])
    assert ck.train_config["distill"] == [str(work / "teacher" / "best.pt"), str(work / "teacher2" / "best.pt"), extra]
    assert load_checkpoint(work / "teacher2" / "best.pt").train_config["seed"] == 7
    assert summary["stages"][2]["command"].count("--distill ") == 3

    # teachers without time for an epoch: their pupils are skipped, and the status names them (a clock that never
    # moves: the tiny budget is not spent by the probe, which may take a quarter of it)
    slow = (stages[0], replace(stages[1], max_epochs=1), stages[2])
    with pytest.raises(TrainingError, match="no stage ran"):
        run_round(synthetic_folder, tmp_path / "w2", tmp_path / "o2", budget_s=1e-3, stages=slow,
                  log=lambda m: None, clock=lambda: 0.0, **COMMON)
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["stages"][2]["status"] == "skipped: its teachers 'teacher', 'teacher2' did not finish"


def test_teacher_tables_that_cannot_run_fail_before_any_training(synthetic_folder, tmp_path):
    with pytest.raises(TrainingError) as e:
        check_stages((TINY[0], replace(TINY[1], teachers="teacher")))
    assert "tuples of names, not strings" in str(e.value)
    missing = (TINY[0], replace(TINY[1], extra_teachers=(str(tmp_path / "gone.pt"),)))
    with pytest.raises(TrainingError, match="extra teacher .*gone.pt is not a file"):
        run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=60, stages=missing, **COMMON)
    assert not (tmp_path / "w").exists()


def test_main_builds_several_teachers_and_adds_the_extra_ones(synthetic_folder, monkeypatch, capsys):
    from fer_edge.weights import resolve_checkpoint

    seen = {}
    monkeypatch.setattr("fer_edge.training.distill_round.run_round",
                        lambda *a, stages, **kw: seen.update(stages=stages))
    base = ["--data", str(synthetic_folder), "--work", "w", "--out", "o", "--budget-minutes", "1"]
    assert main(base + ["--teachers", "2", "--teacher-max-epochs", "150", "--extra-teacher", "small",
                        "--shares", "0.7,0.2,0.1", "--seed", "5", "--students", "finetune"]) == 0
    t1, t2, small, nano = seen["stages"]
    assert (t1.name, t2.name) == ("teacher", "teacher2") and t1.model == t2.model == "resnet18"
    assert t1.share == t2.share == pytest.approx(0.35) and t1.max_epochs == t2.max_epochs == 150
    assert "seed" not in t1.options and t2.options["seed"] == 6  # teacher takes the round's --seed
    for student in (small, nano):
        assert student.teachers == ("teacher", "teacher2")
        assert [resolve_checkpoint(t).resolve() for t in student.extra_teachers] == [resolve_checkpoint("small").resolve()]
    assert (small.share, nano.share) == (0.2, 0.1)
    check_stages(seen["stages"])

    assert main(base + ["--extra-teacher", "small", "--nano-teacher", "small"]) == 0
    _, small, nano = seen["stages"]
    assert nano.teachers == ("small",) and nano.extra_teachers == () and small.extra_teachers
    assert main(base + ["--teachers", "0"]) == 2 and "at least 1" in capsys.readouterr().err
    assert main(base + ["--extra-teacher", "no_such.pt"]) == 2
    assert "no_such.pt: no such checkpoint file" in capsys.readouterr().err


def test_extra_teachers_read_as_typed_in_the_repository(synthetic_folder, monkeypatch):
    from fer_edge.weights import resolve_checkpoint

    seen = {}
    monkeypatch.setattr("fer_edge.training.distill_round.run_round",
                        lambda *a, stages, **kw: seen.update(stages=stages))
    monkeypatch.chdir(resolve_checkpoint("small").resolve().parents[2])  # the repository root
    assert main(["--data", str(synthetic_folder), "--work", "w", "--out", "o", "--budget-minutes", "1",
                 "--extra-teacher", "small"]) == 0
    assert seen["stages"][-2].extra_teachers == ("fer_edge/weights/small.pt",)


def test_teacher_set_reaches_every_teacher_as_given(synthetic_folder, monkeypatch):
    seen = {}
    monkeypatch.setattr("fer_edge.training.distill_round.run_round",
                        lambda *a, stages, **kw: seen.update(stages=stages))
    # the parsing only: the preflight would refuse resnet18 a width and distill_views without replay
    monkeypatch.setattr("fer_edge.training.distill_round._preflight", lambda *a, **kw: None)
    assert main(["--data", str(synthetic_folder), "--work", "w", "--out", "o", "--budget-minutes", "1",
                 "--teachers", "2", "--batch-size", "512", "--lr-scale", "sqrt", "--teacher-set", "cutmix=1.0",
                 "--teacher-set", "weight-decay=0.1", "--teacher-set", "lr=1e-3", "--teacher-set", "qat=false",
                 "--teacher-set", "augment=standard", "--teacher-set", "patience=5",
                 "--teacher-set", "split=none", "--teacher-set", 'model_kwargs={"width": 2}',
                 "--teacher-set", "distill_views=4", "--teacher-set", "wandb=none"]) == 0
    t1, t2, small, nano = seen["stages"]
    for t in (t1, t2):
        assert {k: t.options[k] for k in ("cutmix", "weight_decay", "lr", "qat", "augment", "patience")} == dict(
            cutmix=1.0, weight_decay=0.1, lr=1e-3, qat=False, augment="standard", patience=5)  # lr not rescaled
        assert t.options["split"] is None and t.options["model_kwargs"] == {"width": 2}
        assert t.options["distill_views"] == 4 and t.options["wandb"] is None  # an optional int is an int
        assert t.options["label_smoothing"] == 0.1  # the table's other settings stay
    assert t2.options["seed"] == 1
    assert "cutmix" not in small.options and small.options["lr"] == pytest.approx(6e-3)  # 3e-3 x sqrt(4)
    check_stages(seen["stages"])


def test_bad_teacher_set_items_are_all_reported(synthetic_folder, capsys):
    base = ["--data", str(synthetic_folder), "--work", "w", "--out", "o", "--budget-minutes", "1"]
    bad = ["nope=1", "epochs=3", "lr=abc", "qat=maybe", "x", "model_kwargs=[1]", "distill_views=four"]
    assert main(base + [a for item in bad for a in ("--teacher-set", item)]) == 2
    err = capsys.readouterr().err
    for part in ("'nope': not a TrainConfig option", "'epochs': not a TrainConfig option the round lets you set "
                 "(the round sets it)", "lr='abc'", "qat='maybe': expected true or false", "'x': expected KEY=VALUE",
                 "model_kwargs='[1]': expected a JSON object", "distill_views='four'"):
        assert part in err, part


def _no_training(monkeypatch):
    def refuse(cfg, **kw):
        raise AssertionError(f"trained {cfg.out} although the options were bad")

    monkeypatch.setattr(training, "train", refuse)


@pytest.mark.parametrize("budget", ["nan", "inf", "-inf", "0", "-1"])
def test_a_budget_that_is_not_a_positive_number_is_refused_before_any_training(synthetic_folder, tmp_path, capsys,
                                                                                 monkeypatch, budget):
    _no_training(monkeypatch)
    work, out = tmp_path / "w", tmp_path / "o"
    assert main(["--data", str(synthetic_folder), "--work", str(work), "--out", str(out), f"--budget-minutes={budget}",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--budget-minutes must be a finite, positive number" in err
    assert "Traceback" not in err and not work.exists() and not out.exists()  # the next run may use this --work
    with pytest.raises(TrainingError, match="--budget-minutes must be a finite, positive number"):
        run_round(synthetic_folder, work, out, budget_s=float(budget) * 60, stages=TINY, **COMMON)
    assert not work.exists() and not out.exists()


def test_every_bad_round_option_is_listed_at_once_before_any_training(synthetic_folder, tmp_path, capsys,
                                                                        monkeypatch):
    _no_training(monkeypatch)
    (tmp_path / "a_file").write_text("x")
    base = ["--data", str(synthetic_folder), "--device", "cpu"]
    assert main(base + ["--work", str(tmp_path / "a_file" / "w"), "--out", str(tmp_path / "a_file"),
                        "--budget-minutes", "nan", "--teacher-parts-mb", "nan", "--probe-steps", "0"]) == 2
    err = capsys.readouterr().err
    for part in ("--budget-minutes must be a finite, positive number, not nan",
                 "--teacher-parts-mb must be 0 (keep the teacher in --work only) or a positive number of MiB, not nan",
                 "--probe-steps must be at least 1", f"--work {tmp_path / 'a_file' / 'w'} lies under",
                 f"--out {tmp_path / 'a_file'} is a file"):
        assert part in err, part
    assert "Traceback" not in err
    for mb, why in (("-1", "not -1"), ("0.01", "too small to hold anything")):
        assert main(base + ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--budget-minutes", "1",
                            "--teacher-parts-mb", mb]) == 2
        assert why in capsys.readouterr().err
    # parts that hold something, but not resnet18's largest tensor: refused before the teacher trains, not after
    assert main(base + ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--budget-minutes", "1",
                        "--teacher-parts-mb", "1"]) == 2
    err = capsys.readouterr().err
    assert "stage 'teacher': --teacher-parts-mb 1 cannot send its resnet18 checkpoint" in err
    assert "parts must be at least 4.57 MiB" in err
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()
    with pytest.raises(TrainingError, match="cannot send its simple_cnn checkpoint: tensor .* alone takes"):
        run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=60, stages=TINY, parts_bytes=500_000,
                  **COMMON)
    assert not (tmp_path / "w").exists()


def test_a_stage_whose_outputs_cannot_be_kept_fails_alone_and_its_students_still_run(synthetic_folder, tmp_path,
                                                                                      monkeypatch):
    import fer_edge.checkpoint as checkpoint
    from fer_edge.errors import CheckpointError

    def no_room(*a, **kw):
        raise CheckpointError("no room for the parts")

    real = training.train

    def crashing(cfg, **kw):
        if cfg.out.endswith("student") and "probe" not in cfg.out:
            raise RuntimeError("CUDA out of memory")  # not a FerEdgeError: still that stage's failure only
        return real(cfg, **kw)

    monkeypatch.setattr(checkpoint, "split_checkpoint", no_room)
    monkeypatch.setattr(training, "train", crashing)
    stages = (*TINY, Stage("pupil", "simple_cnn", 0.5, 1, teachers=("teacher",), options=dict(augment="light")))
    logged = []
    with pytest.raises(TrainingError) as e:
        run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=600, stages=stages, parts_bytes=680_000,
                  log=logged.append, **COMMON)
    assert "teacher: keeping its outputs" in str(e.value) and "student: RuntimeError: CUDA out of memory" in str(e.value)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    teacher, student, pupil = summary["stages"]
    assert teacher["status"] == (f"failed: keeping its outputs in {tmp_path / 'o'} failed: no room for the parts "
                                 "(its training finished)")
    assert teacher["epochs_run"] == 2 and teacher["history"] == "teacher_history.csv"  # what could be kept was
    assert (tmp_path / "o" / "teacher_history.csv").is_file() and "checkpoint_parts" not in teacher
    assert student["status"] == "failed: RuntimeError: CUDA out of memory"
    assert pupil["status"] == "done" and (tmp_path / "o" / "pupil.pt").is_file()  # taught by the teacher's best.pt
    assert any("Traceback" in m and "CUDA out of memory" in m for m in logged)  # an unexpected error's traceback
    assert not any(s["status"] in ("running", "pending") for s in summary["stages"])


def test_images_per_epoch_is_the_data_when_it_is_smaller_than_a_batch(synthetic_folder, tmp_path, monkeypatch):
    class Run:
        history = [{"images_per_second": 1000.0, "val_seconds": 0.1}]
        best_accuracy, best_epoch, epochs_run = 0.5, 1, 1

    seen = []
    monkeypatch.setattr(training, "train", lambda cfg, **kw: seen.append(cfg) or Run())
    summary = run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=600, stages=TINY[:1],
                        log=lambda m: None, device="cpu", batch_size=512, probe_steps=2)
    assert summary["train_images_per_epoch"] == 280  # the whole split: one partial batch, not 512 images
    # the epoch estimate counts those 280 images: (280 / 1000 + 0.1 s validation + overhead) x margin
    assert summary["stages"][0]["probe"]["estimated_epoch_seconds"] == pytest.approx((0.28 + 0.1 + 0.5) * 1.05, abs=0.01)
    summary = run_round(synthetic_folder, tmp_path / "w2", tmp_path / "o2", budget_s=600, stages=TINY[:1],
                        log=lambda m: None, device="cpu", batch_size=32, probe_steps=2, max_steps_per_epoch=3)
    assert summary["train_images_per_epoch"] == 96  # 3 full batches of 32
    summary = run_round(synthetic_folder, tmp_path / "w3", tmp_path / "o3", budget_s=600, stages=TINY[:1],
                        log=lambda m: None, device="cpu", batch_size=100, probe_steps=2)
    assert summary["train_images_per_epoch"] == 200  # 2 full batches; the last 80 images are dropped


def _student_probe_raises(monkeypatch, error: BaseException):
    """Make the student's training (its probe comes first) raise ``error``; returns the real ``train``."""
    real = training.train

    def student_fails(cfg, **kw):
        if cfg.out.endswith("student"):
            raise error
        return real(cfg, **kw)

    monkeypatch.setattr(training, "train", student_fails)
    return real


@pytest.mark.parametrize("error, said", [(TrainingError("out of memory"), "out of memory"),
                                         (RuntimeError("CUDA out of memory"), "RuntimeError: CUDA out of memory")])
def test_a_failed_probe_removes_the_probe_runs_so_the_command_can_run_again(synthetic_folder, tmp_path,
                                                                           monkeypatch, error, said):
    real = _student_probe_raises(monkeypatch, error)
    work = tmp_path / "w"
    logged = []
    with pytest.raises(TrainingError, match=f"probe of stage 'student' failed.*{said}.*can run again"):
        run_round(synthetic_folder, work, tmp_path / "o", budget_s=600, stages=TINY, log=logged.append, **COMMON)
    assert not work.exists()  # the round made it; empty, it goes again
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["distill_round.log"]  # --out stays, for the log
    assert "error: the probe of stage 'student' failed" in (tmp_path / "o" / "distill_round.log").read_text()
    assert any("Traceback" in m for m in logged) == isinstance(error, RuntimeError)  # not a user's error: logged
    monkeypatch.setattr(training, "train", real)
    summary = run_round(synthetic_folder, work, tmp_path / "o", budget_s=600, stages=TINY, log=lambda m: None,
                        **COMMON)
    assert [s["status"] for s in summary["stages"]] == ["done", "done"]


def test_an_interrupted_probe_removes_the_probe_runs_too(synthetic_folder, tmp_path, monkeypatch):
    _student_probe_raises(monkeypatch, KeyboardInterrupt())
    work, out = tmp_path / "w", tmp_path / "o"
    logged = []
    with pytest.raises(KeyboardInterrupt):
        run_round(synthetic_folder, work, out, budget_s=600, stages=TINY, log=logged.append, **COMMON)
    # nothing was trained: no summary of stages "not run", and the folders the round made are gone again, but
    # --out, which holds the round's log
    assert not work.exists() and [p.name for p in out.iterdir()] == ["distill_round.log"]
    assert "nothing was kept but the round's log" in logged[-1] and "which the round had made" in logged[-1]
    assert not any("what finished" in m for m in logged)
    with pytest.raises(KeyboardInterrupt):  # the same command again
        run_round(synthetic_folder, work, out, budget_s=600, stages=TINY, log=logged.append, **COMMON)
    assert [p.name for p in out.iterdir()] == ["distill_round.log"] and not (work / "probe").exists()


def test_an_interrupted_stage_says_how_to_resume_it_with_its_own_command(synthetic_folder, tmp_path, monkeypatch):
    real, hints = training.train, []

    def interrupted(cfg, **kw):
        if cfg.out.endswith("student") and "probe" not in cfg.out:
            hints.append(kw.get("resume_hint"))
            raise KeyboardInterrupt  # before its first epoch finished
        return real(cfg, **kw)

    monkeypatch.setattr(training, "train", interrupted)
    logged = []
    with pytest.raises(KeyboardInterrupt):
        run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=600, stages=TINY, log=logged.append,
                  **COMMON)
    teacher, student = json.loads((tmp_path / "o" / "summary.json").read_text())["stages"]
    assert hints == [hints[0]] and hints[0].endswith(f"{student['command']} --resume")
    assert "summary.json" in hints[0] and "continue with --resume" not in hints[0]
    assert student["status"] == "interrupted before its first epoch finished: nothing of it was kept"
    assert "what was kept (teacher)" in logged[-1]


def test_an_extra_teacher_where_the_round_writes_is_refused_before_any_training(synthetic_folder, tmp_path,
                                                                               tiny_checkpoint):
    import shutil

    out, work = tmp_path / "o10", tmp_path / "w"
    out.mkdir()
    mine = shutil.copyfile(tiny_checkpoint, out / "student.pt")  # the round keeps its student there
    before = mine.read_bytes()
    student = replace(TINY[1], extra_teachers=(str(tmp_path / "o10" / ".." / "o10" / "student.pt"),))
    with pytest.raises(TrainingError, match=r"is where the round writes stage 'student''s kept checkpoint"):
        run_round(synthetic_folder, work, out, budget_s=600, stages=(TINY[0], student), log=lambda m: None,
                  **COMMON)
    assert mine.read_bytes() == before and not work.exists() and sorted(p.name for p in out.iterdir()) == ["student.pt"]
    # a teacher's part, and a path inside a stage's run folder in --work, are refused the same way
    for path, said in ((out / "teacher.part0.pt", "a part of stage 'teacher'"),
                       (work / "teacher" / "best.pt", "stage 'teacher''s run folder")):
        bad = replace(TINY[1], extra_teachers=(str(path),))
        with pytest.raises(TrainingError, match=said):
            run_round(synthetic_folder, work, out, budget_s=600, stages=(TINY[0], bad), parts_bytes=10**6,
                      log=lambda m: None, **COMMON)


def test_extra_teachers_are_loaded_and_their_labels_checked_before_any_training(synthetic_folder, tmp_path,
                                                                               tiny_checkpoint):
    from fer_edge.checkpoint import save_checkpoint

    broken = tmp_path / "broken.pt"
    broken.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    raw = torch.load(tiny_checkpoint, weights_only=True)
    other = save_checkpoint(tmp_path / "other.pt", {**raw, "labels": list("abcdefg")})
    student = replace(TINY[1], extra_teachers=(str(broken), str(other)), options={**TINY[1].options, "lr": -1})
    with pytest.raises(TrainingError) as e:
        run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=600, stages=(TINY[0], student),
                  log=lambda m: None, **COMMON)
    said = str(e.value)
    assert "broken.pt: not a readable checkpoint" in said
    assert "other.pt: its labels ['a', 'b'" in said and "differ from fer-edge's ['angry'" in said
    assert "--lr must be positive" in said  # all at once
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()


def test_teachers_of_several_architectures_form_one_ensemble(synthetic_folder, monkeypatch):
    seen = {}
    monkeypatch.setattr("fer_edge.training.distill_round.run_round",
                        lambda *a, stages, **kw: seen.update(stages=stages))
    base = ["--data", str(synthetic_folder), "--work", "w", "--out", "o", "--budget-minutes", "1"]
    assert main(base + ["--teacher", "resnet18", "--teacher", "enhanced_cnn", "--teachers", "2", "--seed", "3",
                        "--teacher-set", "cutmix=1.0", "--shares", "0.6,0.3,0.1"]) == 0
    *teachers, small, nano = seen["stages"]
    assert [(t.name, t.model) for t in teachers] == [("teacher", "resnet18"), ("teacher2", "resnet18"),
                                                    ("teacher3", "enhanced_cnn"), ("teacher4", "enhanced_cnn")]
    assert [t.options.get("seed") for t in teachers] == [None, 4, 5, 6]  # the first takes the round's --seed
    assert all(t.share == pytest.approx(0.15) and t.options["cutmix"] == 1.0 for t in teachers)
    assert small.teachers == nano.teachers == ("teacher", "teacher2", "teacher3", "teacher4")
    check_stages(seen["stages"])
    assert main(base) == 0 and [s.model for s in seen["stages"]] == ["resnet18", "fer_small", "fer_nano"]


def test_a_student_whose_teachers_partly_finished_distils_from_those_that_did(synthetic_folder, tmp_path):
    """A one-shot round: teacher2 without time for an epoch used to skip every student (exit 0, nothing learnt)."""
    stages = (TINY[0], replace(TINY[0], name="teacher2", share=0.001, options={**TINY[0].options, "seed": 7}),
              replace(TINY[1], teachers=("teacher", "teacher2")))
    logged: list[str] = []
    # a clock that never moves: each stage gets its share of the whole budget; teacher2 gets about 0.1 s, under an epoch
    summary = run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=60, stages=stages,
                        log=logged.append, clock=lambda: 0.0, **COMMON)
    teacher, teacher2, student = summary["stages"]
    assert teacher["status"] == "done" and teacher2["status"].startswith("skipped: 0") and "allotted" in teacher2["status"]
    assert student["status"] == "done"
    assert student["note"] == "its teacher 'teacher2' did not finish: distilled from 'teacher' only"
    assert any(student["note"] in m for m in logged)
    ck = load_checkpoint(tmp_path / "o" / student["checkpoint"])
    assert ck.train_config["distill"] == [str(tmp_path / "w" / "teacher" / "best.pt")]


def test_an_out_the_system_will_not_create_is_a_clean_error(synthetic_folder, tmp_path, monkeypatch):
    """Root passes the os.access checks for /proc/x, and the round died in a FileNotFoundError traceback."""
    from pathlib import Path

    real = Path.mkdir
    refused = tmp_path / "refused"

    def mkdir(self, *a, **k):
        if self == refused:
            raise FileNotFoundError(2, "No such file or directory")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(TrainingError, match=r"--work .*refused: cannot create it \(No such file or directory\); "
                                            r"choose another --work"):
        run_round(synthetic_folder, refused, tmp_path / "o" / "deep", budget_s=60, stages=TINY, log=lambda m: None,
                  **COMMON)
    assert not (tmp_path / "o").exists()  # the --out it had made is removed again, with the parents it made


def test_main_reports_every_bad_option_at_once(synthetic_folder, tmp_path, capsys):
    assert main(["--data", str(tmp_path / "gone"), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                 "--budget-minutes", "0", "--extra-teacher", "tiny", "--teacher-set", "epochs=3",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    for part in ("gone does not exist", "bad --teacher-set: 'epochs'", "tiny: no such checkpoint file",
                 "--budget-minutes must be a finite, positive number"):
        assert part in err, err
    assert main(["--data", str(synthetic_folder), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                 "--budget-minutes", "1", "--teacher", "resnet99", "--teacher", "simple_cnn",
                 "--teacher-set", "cutmix=lots", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet99'" in err and "bad --teacher-set: cutmix='lots'" in err, err
    # a missing extra teacher hid the rest; a round-wide problem was said once per stage
    assert main(["--data", str(synthetic_folder), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                 "--budget-minutes", "1", "--teacher", "resnet99", "--batch-size", "0", "--extra-teacher",
                 str(tmp_path / "a.pt"), "--extra-teacher", str(tmp_path / "b.pt"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    for name in ("a.pt", "b.pt"):
        assert f"--extra-teacher {tmp_path / name}: no such checkpoint file" in err, err
    assert "unknown model 'resnet99'" in err, err
    assert err.count("--batch-size must be at least 1") == 1 and "\n  --batch-size must be at least 1" in err, err
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()


def test_every_round_command_in_readme_is_accepted(synthetic_folder, tmp_path, monkeypatch):
    """The round's commands in README and the GPU rounds' in docs/training-log.md parse and pass the round's
    checks (a lent GPU gives one try), with the data, --out and --work here and the device taken as present."""
    import re
    from pathlib import Path

    import fer_edge.training.trainer as trainer

    root = Path(__file__).resolve().parents[1]
    commands = []
    for doc, least in (("README.md", 2), ("docs/training-log.md", 2)):
        text = (root / doc).read_text()
        found = re.findall(r"python3? -m fer_edge\.training\.distill_round (.*?)(?:`|\n\n|\n[^ \-])", text, re.S)
        # whole commands (prose abbreviates some with "..."): README's usage line and GPU recipe, the log's rounds
        found = [c for c in found if "--data " in c and "..." not in c]
        assert len(found) >= least, (doc, found)
        commands += found
    seen = []
    monkeypatch.setattr("fer_edge.training.distill_round.run_round", lambda *a, stages, **kw: seen.append(stages))
    monkeypatch.setattr(trainer, "resolve_device", lambda name: torch.device("cpu"))
    for i, text in enumerate(commands):
        text = re.split(r" (?:>|2>&1|;|&&|\|)(?: |$)", text, maxsplit=1)[0]  # the round's own arguments, not the
        argv = shlex.split(text.replace("\\\n", " ").replace("\n", " "))  # shell's redirection and what follows
        for option, value in (("--data", str(synthetic_folder)), ("--out", str(tmp_path / f"o{i}")),
                              ("--work", str(tmp_path / f"w{i}"))):
            argv[argv.index(option) + 1] = value
        assert main(argv) == 0, argv
    assert len(seen) == len(commands)


class _QuickRun:
    """What ``train`` returns, without training: a probe's figures and a finished run's."""
    history = [{"images_per_second": 1000.0, "val_seconds": 0.1}]
    best_accuracy, best_epoch, epochs_run = 0.5, 1, 1


def test_main_runs_the_preflight_once(synthetic_folder, tmp_path, monkeypatch):
    """main lists the preflight's problems with its own, so run_round does not check the same arguments again
    (every extra teacher was loaded, and every model built, twice)."""
    import fer_edge.training.distill_round as distill_round

    calls = []
    real = distill_round._preflight
    monkeypatch.setattr(distill_round, "_preflight", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    monkeypatch.setattr(training, "train", lambda cfg, **kw: _QuickRun())
    assert main(["--data", str(synthetic_folder), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                 "--budget-minutes", "1", "--teacher", "simple_cnn", "--device", "cpu", "--batch-size", "32",
                 "--probe-steps", "1", "--max-steps-per-epoch", "1"]) == 0
    assert len(calls) == 1
    # run_round on its own still runs it (test_bad_stage_tables_and_options_fail_before_any_training: its problems)
    run_round(synthetic_folder, tmp_path / "w2", tmp_path / "o2", budget_s=60, stages=TINY, log=lambda m: None,
              **COMMON)
    assert len(calls) == 2


def test_a_work_or_out_inside_the_image_folder_is_refused_before_anything_is_loaded(synthetic_folder, tmp_path,
                                                                                     monkeypatch, capsys):
    """A --work in a split folder was refused only by the loader (an unknown class folder), after the data was
    read and a probe trained; one beside the splits became a split of the data set."""
    import shutil

    import fer_edge.data as data_module

    data = tmp_path / "data"
    shutil.copytree(synthetic_folder, data)  # the session's folder stays clean whatever happens here

    def no_loading(*a, **kw):
        raise AssertionError("the data was loaded although the options were bad")

    monkeypatch.setattr(data_module, "load_split", no_loading)
    _no_training(monkeypatch)
    for work in (data / "train" / "round", data / "round", data):
        assert main(["--data", str(data), "--work", str(work), "--out", str(tmp_path / "o"), "--budget-minutes", "1",
                     "--teacher", "simple_cnn", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert f"--work {work} lies inside --data {data}: the round would write into the data set" in err, err
        assert "choose another --work, outside the data" in err and "--out" not in err
    assert main(["--data", str(data), "--work", str(tmp_path / "w"), "--out", str(data / "val" / "kept"),
                 "--budget-minutes", "1", "--teacher", "simple_cnn", "--device", "cpu"]) == 2
    assert f"--out {data / 'val' / 'kept'} lies inside --data {data}" in capsys.readouterr().err
    # reached through a symbolic link too; and run_round refuses it on its own
    (tmp_path / "link").symlink_to(data / "train")
    with pytest.raises(TrainingError, match="--work .*link/round lies inside --data"):
        run_round(data, tmp_path / "link" / "round", tmp_path / "o", budget_s=60, stages=TINY, **COMMON)
    assert sorted(p.name for p in data.iterdir()) == ["train", "val"] and not (data / "train" / "round").exists()
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()
    # a folder beside the data, and one holding a CSV (only the CSV is read), are fine
    assert not _inside_data_problem(tmp_path / "data2", data)
    (tmp_path / "csvdir").mkdir()
    (tmp_path / "csvdir" / "fer2013.csv").write_text("emotion,pixels,Usage\n")
    assert not _inside_data_problem(tmp_path / "csvdir" / "round", tmp_path / "csvdir")


def _inside_data_problem(work, data):
    from fer_edge.training.distill_round import option_problems

    return [p for p in option_problems(60, 0, work, work.parent / "o", 1, data) if "lies inside" in p]


def test_amp_fp16_on_the_cpu_is_a_usage_error(synthetic_folder, tmp_path, monkeypatch, capsys):
    """fer-edge train only warns (emulated half precision, many times slower); a round would size its stages on
    that throughput."""
    import fer_edge.training.trainer as trainer

    _no_training(monkeypatch)
    base = ["--data", str(synthetic_folder), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
            "--budget-minutes", "1", "--amp", "fp16", "--teacher", "simple_cnn"]
    assert main(base + ["--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --amp fp16 with --device cpu: fp16 autocast on a CPU is emulated, many times slower than "
                   "bf16 or no autocast, and the round would size its stages on that speed; use --amp bf16 or --amp "
                   "off (or leave --amp out: auto picks between them)\n")
    monkeypatch.setattr(trainer, "resolve_device", lambda name: torch.device("cpu"))  # auto finds no GPU
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --amp fp16 with --device auto found no GPU, so it runs on the CPU: ")
    assert err.count("\n") == 1 and "--amp bf16" in err
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()
    # on CUDA it is the round's to use
    seen = []
    monkeypatch.setattr(trainer, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr("fer_edge.training.distill_round.run_round", lambda *a, amp, **kw: seen.append(amp))
    assert main(base) == 0 and main(base + ["--device", "cuda"]) == 0 and seen == ["fp16", "fp16"]


def test_the_round_appends_its_log_to_out_as_it_goes(synthetic_folder, tmp_path, monkeypatch, capsys):
    """Its lines went only to stdout, kept only where the caller redirected them; stdout is unchanged."""
    out = tmp_path / "o"
    on_disk = {}

    def quick(cfg, **kw):  # what the log file holds when each run starts
        on_disk[cfg.out] = (out / "distill_round.log").read_text()
        return _QuickRun()

    monkeypatch.setattr(training, "train", quick)
    argv = ["--data", str(synthetic_folder), "--out", str(out), "--budget-minutes", "1", "--teacher", "simple_cnn",
            "--device", "cpu", "--batch-size", "32", "--probe-steps", "1", "--max-steps-per-epoch", "1"]
    assert main(argv + ["--work", str(tmp_path / "w")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "probe teacher: simple_cnn, 2 epochs of 1 steps" and len(printed) > 6
    first, *lines, last = (out / "distill_round.log").read_text().splitlines()
    assert lines == printed  # the same lines, between the round's start and its end
    assert "round started: stages teacher, small, nano, budget 60 s" in first and "round finished" in last
    # each line was on disk before the round went on: every probe's, and the teacher's plan and command, before
    # the teacher trained
    plan = next(i for i, line in enumerate(printed) if line.startswith("teacher: "))
    assert on_disk[str(tmp_path / "w" / "teacher")].splitlines()[1:] == printed[:plan + 2]
    assert printed[plan + 1].startswith("  fer-edge train ") and "probe nano: " in printed[plan - 1]
    # appended: a second round into the same --out adds its own lines, an error included (the first round's kept
    # files moved away: an --out that holds them is refused)
    for f in out.iterdir():
        if f.name != "distill_round.log":
            f.unlink()
    monkeypatch.setattr(training, "train", lambda cfg, **kw: (_ for _ in ()).throw(TrainingError("no memory")))
    assert main(argv + ["--work", str(tmp_path / "w2")]) == 1
    text = (out / "distill_round.log").read_text()
    assert text.count("round started") == 2 and text.startswith(first + "\n")
    assert text.splitlines()[-1].startswith("error: the probe of stage 'teacher' failed") and "no memory" in text
    # an input there would be overwritten by the log: refused like any other the round writes
    with pytest.raises(TrainingError, match="is where the round writes the round's log"):
        run_round(synthetic_folder, tmp_path / "w3", out, budget_s=60, log=lambda m: None, **COMMON,
                  stages=(replace(TINY[1], teachers=(), extra_teachers=(str(out / "distill_round.log"),)),))


def test_a_log_that_cannot_be_written_is_said_once_and_the_round_goes_on(synthetic_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "train", lambda cfg, **kw: _QuickRun())
    (tmp_path / "o" / "distill_round.log").mkdir(parents=True)  # not a file: every write fails
    logged = []
    summary = run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=600, stages=TINY,
                        log=logged.append, **COMMON)
    assert [s["status"] for s in summary["stages"]] == ["done", "done"]
    said = [m for m in logged if "distill_round.log cannot be written" in m]
    assert len(said) == 1 and said[0].endswith("its lines go to the output only") and logged.index(said[0]) == 0


def test_teacher_set_amp_fp16_on_the_cpu_is_refused_as_well(synthetic_folder, tmp_path, monkeypatch, capsys):
    """QA: --teacher-set amp=fp16 (or device=cpu with --amp fp16) trained the teachers with fp16 on the CPU."""
    _no_training(monkeypatch)
    base = ["--data", str(synthetic_folder), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
            "--budget-minutes", "1", "--teacher", "simple_cnn", "--device", "cpu"]
    assert main(base + ["--teacher-set", "amp=fp16"]) == 2
    err = capsys.readouterr().err
    assert "--teacher-set amp=fp16 with --device cpu: fp16 autocast on a CPU is emulated" in err
    assert "use --teacher-set amp=bf16 or amp=off" in err
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()


def test_sigterm_while_the_options_are_checked_ends_with_one_line(synthetic_folder, tmp_path, monkeypatch, capsys):
    """QA: SIGTERM (a timeout's) during the checks or the data load killed the round silently (exit -15)."""
    import os
    import signal

    import fer_edge.training.distill_round as dr

    def terminated(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(dr, "_preflight", terminated)
    base = ["--data", str(synthetic_folder), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
            "--budget-minutes", "1", "--teacher", "simple_cnn", "--device", "cpu"]
    assert main(base) == 130
    assert capsys.readouterr().err == ("interrupted: before the round started (while its options were checked); "
                                       "nothing was written\n")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()


def test_an_interrupt_while_the_data_loads_says_so_and_logs_it(synthetic_folder, tmp_path, monkeypatch, capsys):
    """QA: Ctrl-C or SIGTERM during the round's data load ended it with exit 130 and not a line, on the output or
    in its log."""
    import fer_edge.data

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fer_edge.data, "load_split", interrupted)
    out = tmp_path / "o"
    assert main(["--data", str(synthetic_folder), "--work", str(tmp_path / "w"), "--out", str(out),
                 "--budget-minutes", "1", "--teacher", "simple_cnn", "--device", "cpu"]) == 130
    said = capsys.readouterr().err
    assert "interrupted: while the data was loaded, so no stage was trained" in said
    assert "interrupted: while the data was loaded" in (out / "distill_round.log").read_text()
    assert not (tmp_path / "w").exists()
