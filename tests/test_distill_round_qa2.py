"""QA round 2 of the distillation round (fer_edge.training.distill_round): a used --out, infinite --shares, a closed
stdout, a teacher named twice, and where the interrupt line goes. Training is stubbed: each test takes a second or
two."""
from __future__ import annotations

import json

import pytest

import fer_edge.training as training
from fer_edge.errors import TrainingError
from fer_edge.training.distill_round import Stage, build_stages, check_stages, main, run_round

TINY = (
    Stage("teacher", "simple_cnn", 0.5, 2, keep_checkpoint=False, options=dict(lr=3e-3, augment="light")),
    Stage("student", "fer_nano", 0.5, 2, teachers=("teacher",),
          options=dict(lr=3e-3, augment="light", distill_alpha=0.7, distill_tta=True)),
)
COMMON = dict(device="cpu", batch_size=32, probe_steps=2, max_steps_per_epoch=3)


class _QuickRun:
    """What ``train`` returns, without training: a probe's figures and a finished run's."""
    history = [{"images_per_second": 1000.0, "val_seconds": 0.1}]
    best_accuracy, best_epoch, epochs_run = 0.5, 1, 1


def _no_training(monkeypatch):
    def refuse(cfg, **kw):
        raise AssertionError(f"trained {cfg.out} although the options were bad")

    monkeypatch.setattr(training, "train", refuse)


def _argv(data, tmp_path, *extra):
    return ["--data", str(data), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--budget-minutes",
            "1", "--teacher", "simple_cnn", "--device", "cpu", "--batch-size", "32", "--probe-steps", "1",
            "--max-steps-per-epoch", "1", *extra]


def test_an_out_that_holds_a_rounds_files_is_refused_before_any_work(synthetic_folder, tmp_path, monkeypatch,
                                                                      capsys):
    """QA: a second round into the same --out replaced the first's files as it went; interrupted, it left the
    first round's nano.pt beside a summary saying nano was not run."""
    _no_training(monkeypatch)
    out = tmp_path / "o"
    out.mkdir()
    for name in ("summary.json", "nano.pt", "small_history.csv", "teacher.part1.pt", "distill_round.log",
                 "notes.txt"):
        (out / name).write_text("the first round's\n")
    assert main(_argv(synthetic_folder, tmp_path)) == 2
    err = capsys.readouterr().err
    assert (f"--out {out} already holds a round's files (nano.pt, small_history.csv, summary.json, teacher.part1.pt)"
            f": the round would overwrite them") in err, err
    assert "choose another --out, or move them" in err
    assert not (tmp_path / "w").exists() and (out / "nano.pt").read_text() == "the first round's\n"
    with pytest.raises(TrainingError, match=r"already holds a round's files \(summary.json, teacher.part1.pt\)"):
        run_round(synthetic_folder, tmp_path / "w", out, budget_s=600, stages=TINY, log=lambda m: None, **COMMON)
    # the round's log alone (a round that did not start leaves it) and files of no round's are no obstacle
    for name in ("summary.json", "nano.pt", "small_history.csv", "teacher.part1.pt"):
        (out / name).unlink()
    monkeypatch.setattr(training, "train", lambda cfg, **kw: _QuickRun())
    assert main(_argv(synthetic_folder, tmp_path)) == 0
    assert (out / "summary.json").is_file() and (out / "notes.txt").is_file()


@pytest.mark.parametrize("shares", ["inf,1,1", "1e308,1e308,1e308", "nan,1,1", "1,-inf,1"])
def test_shares_that_are_not_finite_are_a_usage_error_before_any_work(synthetic_folder, tmp_path, monkeypatch,
                                                                       capsys, shares):
    """QA: --shares inf,1,1 ran the probe, then failed with a traceback (a NaN allotment), leaving the probe runs."""
    _no_training(monkeypatch)
    with pytest.raises(SystemExit) as e:
        main(_argv(synthetic_folder, tmp_path, "--shares", shares))
    assert e.value.code == 2
    assert f"expected three positive numbers (finite, with a finite sum), teacher,small,nano; got {shares!r}" in \
        capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()


def test_a_stage_table_whose_shares_are_not_finite_is_refused(synthetic_folder, tmp_path, monkeypatch):
    _no_training(monkeypatch)
    with pytest.raises(TrainingError, match="stage 'teacher': share must be positive and finite, not inf"):
        check_stages((Stage("teacher", "simple_cnn", float("inf"), 1),))
    huge = tuple(Stage(f"s{i}", "simple_cnn", 1e308, 1) for i in range(3))
    with pytest.raises(TrainingError, match="shares add up to more than a float holds"):
        run_round(synthetic_folder, tmp_path / "w", tmp_path / "o", budget_s=600, stages=huge, log=lambda m: None,
                  **COMMON)
    assert not (tmp_path / "w").exists()


class _ClosedStdout:
    """A stdout whose reader went away: every write and flush is a BrokenPipeError."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise OSError("no file descriptor here")


def test_a_closed_stdout_leaves_the_round_to_finish_with_its_lines_in_its_log(synthetic_folder, tmp_path,
                                                                              monkeypatch, capsys):
    """QA: `... | head -1` killed the round with a BrokenPipeError traceback at its next line: in the probe, with
    the probe runs left (the same command refused); in a stage, with that stage "running" in the summary."""
    import sys

    import fer_edge.cli.common as common

    redirected = []
    monkeypatch.setattr(common, "_stdout_to_devnull", lambda: redirected.append(True))  # the commands' own
    monkeypatch.setattr(training, "train", lambda cfg, **kw: _QuickRun())
    monkeypatch.setattr(sys, "stdout", _ClosedStdout())
    out = tmp_path / "o"
    assert main(_argv(synthetic_folder, tmp_path)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["done", "done", "done"]
    lines = (out / "distill_round.log").read_text().splitlines()
    assert lines[1] == "probe teacher: simple_cnn, 2 epochs of 1 steps" and "round finished" in lines[-1]
    assert any(line.startswith("nano: best validation accuracy") for line in lines)  # every line, after the pipe
    warning = ("warning: the output was closed (its reader went away): the round goes on, its lines in "
               f"{out / 'distill_round.log'} only")
    assert lines[2] == warning and capsys.readouterr().err.count(warning) == 1
    assert redirected  # stdout to /dev/null, as the fer-edge commands do
    # the library's caller's log too
    said = []

    def gone(message):
        said.append(message)
        raise BrokenPipeError(32, "Broken pipe")

    summary = run_round(synthetic_folder, tmp_path / "w2", tmp_path / "o2", budget_s=600, stages=TINY, log=gone,
                        **COMMON)
    assert [s["status"] for s in summary["stages"]] == ["done", "done"] and len(said) == 1


def test_a_teacher_named_twice_is_a_usage_error(synthetic_folder, tmp_path, monkeypatch, capsys):
    """QA: --extra-teacher small twice gave the small stage `--distill small.pt --distill small.pt`, and
    --teacher-set seed=5 --teachers 2 gave both teachers seed 5: an ensemble weighting one member twice."""
    _no_training(monkeypatch)
    with pytest.raises(TrainingError, match=r"--extra-teacher small is given twice: the teachers' average would "
                                            r"only weight that teacher twice; give each teacher once"):
        build_stages("simple_cnn", 1, 2, ["small", "small"], "teacher", "scratch", (0.4, 0.35, 0.25), 128, "none")
    assert main(_argv(synthetic_folder, tmp_path, "--extra-teacher", "small", "--extra-teacher", "small")) == 2
    assert "--extra-teacher small is given twice" in capsys.readouterr().err
    from fer_edge.weights import resolve_checkpoint

    path = str(resolve_checkpoint("small"))
    assert main(_argv(synthetic_folder, tmp_path, "--extra-teacher", "small", "--extra-teacher", path)) == 2
    assert f"--extra-teacher small and {path} name the same checkpoint" in capsys.readouterr().err
    for extra in (["--teachers", "2"], ["--teacher", "simple_cnn"]):  # two simple_cnn teachers, one seed
        assert main(_argv(synthetic_folder, tmp_path, "--teacher-set", "seed=5", *extra)) == 2
        assert ("--teacher-set seed=5 gives every teacher that seed, so the teachers of simple_cnn would be the "
                "same run") in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()
    # a seed for one teacher of each model is no repeat; nor are two teachers of one model at --seed, --seed+1
    stages = build_stages(["simple_cnn", "fer_nano"], 1, 2, [], "teacher", "scratch", (0.4, 0.35, 0.25), 128,
                          "none", teacher_options={"seed": 5})
    assert [s.options["seed"] for s in stages[:2]] == [5, 5]
    stages = build_stages("simple_cnn", 2, 2, [], "teacher", "scratch", (0.4, 0.35, 0.25), 128, "none", seed=3)
    assert [s.options.get("seed", 3) for s in stages[:2]] == [3, 4]
    # a library stage table naming a teacher twice
    with pytest.raises(TrainingError, match="stage 'student': teacher 'teacher' is given twice"):
        check_stages((TINY[0], Stage("student", "fer_nano", 0.5, 1, teachers=("teacher", "teacher"))))


def test_the_rounds_interrupt_line_is_one_interrupted_line_on_stderr(synthetic_folder, tmp_path, monkeypatch,
                                                                     capsys):
    """QA: the round's interrupt message went to stdout, without the `interrupted:` prefix every command's has."""
    def interrupted(cfg, **kw):
        if cfg.out.endswith("small") and "probe" not in cfg.out:
            raise KeyboardInterrupt
        return _QuickRun()

    monkeypatch.setattr(training, "train", interrupted)
    assert main(_argv(synthetic_folder, tmp_path)) == 130
    captured = capsys.readouterr()
    assert "interrupted" not in captured.out
    said = [line for line in captured.err.splitlines() if "interrupted" in line]
    assert said == [f"interrupted: {tmp_path / 'o'} holds only the summary (the probe's figures): no stage kept "
                    f"anything ({tmp_path / 'o' / 'summary.json'})"]  # (the stub training writes no history)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [s["status"][:11] for s in summary["stages"]] == ["done", "interrupted", "not run: th"]
    assert said[0] in (tmp_path / "o" / "distill_round.log").read_text()

    def probe_interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", probe_interrupted)
    assert main(_argv(synthetic_folder, tmp_path, "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2"))) == 130
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if "interrupted" in line]
    assert "interrupted" not in captured.out and len(said) == 1
    assert said[0].startswith("interrupted: during the probe, so no stage was trained")

    import fer_edge.data

    monkeypatch.setattr(fer_edge.data, "load_split", probe_interrupted)
    assert main(_argv(synthetic_folder, tmp_path, "--work", str(tmp_path / "w3"), "--out", str(tmp_path / "o3"))) == 130
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if "interrupted" in line]
    assert "interrupted" not in captured.out and len(said) == 1
    assert said[0].startswith("interrupted: while the data was loaded, so no stage was trained")
