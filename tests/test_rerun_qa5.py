"""QA pass 5 on reruns into the same output folder: outputs inside an image-folder data set, bench's lock and its
note on a replaced report, a checkpoint that cannot be written (a full disk), a re-export killed after its new file
replaced the old one, and a read-only --out."""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fer_edge.cli import app
from fer_edge.errors import CheckpointError, FerEdgeError

#: torch's own message when its zip writer hits a full disk (after "basic_ios::clear: iostream error")
TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 498240 vs 498128"
BENCH_FAST = dict(iters=2, warmup=0, rounds=1, batches=(1,), threads=1, n_images=14)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def other_checkpoint(tiny_checkpoint, tmp_path) -> Path:
    """A second ingredient for a soup: the tiny checkpoint with its weights nudged (a copy is refused as such)."""
    import torch

    from fer_edge.checkpoint import load_checkpoint, save_checkpoint

    raw = dict(load_checkpoint(tiny_checkpoint).raw)
    raw["state_dict"] = {k: v + 0.01 if torch.is_floating_point(v) else v for k, v in raw["state_dict"].items()}
    return save_checkpoint(tmp_path / "other.pt", raw)


@pytest.fixture
def gate_on_synthetic_data(monkeypatch):
    """The parity gate runs on the 84 synthetic validation images (as tests/test_export.py lets it)."""
    from fer_edge.exporters import calibration

    monkeypatch.setattr(calibration, "MIN_VAL_SIZE", 64)


@pytest.fixture
def images(synthetic_folder, tmp_path) -> Path:
    """A copy of the image-folder data set (a failing refusal must not write into the session's one)."""
    return Path(shutil.copytree(synthetic_folder, tmp_path / "imgs"))


# --- 1: outputs inside the image-folder data set a command reads ----------------------------------------------
def test_eval_refuses_an_out_inside_its_image_folder_data(images, tiny_checkpoint):
    before = _files(images)
    res = invoke("eval", "--checkpoint", tiny_checkpoint, "--data", images, "--out", images / "val" / "happy")
    assert res.exit_code == 1, res.output
    msg = " ".join(res.output.split())
    assert f"--out {images / 'val' / 'happy'} lies inside {images}, the image-folder data set given as --data" in msg
    assert "pick an --out outside it" in msg
    assert _files(images) == before  # no confusion matrix read as a 'happy' face by the next command


def test_eval_of_a_checkpoint_kept_in_the_data_folder_puts_its_plot_elsewhere(images, tiny_checkpoint, tmp_path,
                                                                              monkeypatch):
    shutil.copy(tiny_checkpoint, images / "tiny.pt")
    monkeypatch.chdir(tmp_path)
    res = invoke("eval", "--checkpoint", images / "tiny.pt", "--data", images)
    assert res.exit_code == 0, res.output
    assert "lies in the image-folder data set" in " ".join(res.output.split())
    assert not list(images.glob("confusion_*.png")) and list((tmp_path / "fer-edge-eval").glob("confusion_*.png"))


def test_train_refuses_an_out_inside_its_image_folder_data(images):
    before = _files(images)
    res = invoke("train", "--data", images, "--model", "fer_nano", "--epochs", "1", "--max-steps-per-epoch", "1",
                 "--out", images / "val" / "sad", "--no-progress")
    assert res.exit_code == 1, res.output
    assert "the image-folder data set given as --data" in " ".join(res.output.split())
    assert _files(images) == before


def test_bench_refuses_an_out_inside_its_image_folder_data(images, tiny_checkpoint):
    from fer_edge.benchmarks.bench import run_bench

    before = _files(images)
    with pytest.raises(FerEdgeError, match="the image-folder data set given as --data"):
        run_bench([tiny_checkpoint], data=images, out_dir=images / "val" / "fear", **BENCH_FAST)
    assert _files(images) == before


def test_soup_refuses_an_out_inside_its_image_folder_data(images, tiny_checkpoint, other_checkpoint):
    other = other_checkpoint
    before = _files(images)
    res = invoke("soup", tiny_checkpoint, other, "--data", images, "--out", images / "val" / "soup.pt")
    assert res.exit_code == 1, res.output
    assert "the image-folder data set given as --data" in " ".join(res.output.split())
    assert _files(images) == before


def test_export_keeps_its_own_words_for_an_out_inside_the_data(images, tiny_checkpoint):
    from fer_edge.errors import ExportError
    from fer_edge.exporters.api import check_not_in_data

    with pytest.raises(ExportError) as e:
        check_not_in_data(images / "exports", [("given as --calib-data", images)])
    assert str(e.value) == (
        f"--out {images / 'exports'} lies inside {images}, the image-folder data set given as --calib-data: the "
        "export's folders would be read as splits or classes of that data set, which every later command on it "
        "(this export again among them) would then refuse; pick an --out outside it")


# --- 2: bench's lock on --out, and the note on a report it replaces ------------------------------------------
def test_a_second_bench_into_the_same_out_is_refused(tiny_checkpoint, synthetic_csv, tmp_path):
    from fer_edge.benchmarks.bench import run_bench
    from fer_edge.utils import hold_lock, release_lock

    LOCK_FILE = ".fer-edge-bench.lock"  # (bench.LOCK_FILE)
    out = tmp_path / "b"
    out.mkdir()
    lock = hold_lock(out / LOCK_FILE)  # the bench running now
    try:
        with pytest.raises(FerEdgeError, match="another fer-edge bench is writing into it now"):
            run_bench([tiny_checkpoint], data=synthetic_csv, out_dir=out, **BENCH_FAST)
    finally:
        release_lock(out / LOCK_FILE, lock)
    assert list(out.iterdir()) == []


def test_a_bench_rerun_notes_the_report_it_replaced(tiny_checkpoint, synthetic_csv, tmp_path):
    from fer_edge.benchmarks.bench import run_bench

    out = tmp_path / "new" / "b"
    first = run_bench([tiny_checkpoint], data=synthetic_csv, out_dir=out, **BENCH_FAST)
    assert not [n for n in first.notes if n.startswith("replaced")]
    second = run_bench([tiny_checkpoint], data=synthetic_csv, out_dir=out, **BENCH_FAST)
    (note,) = [n for n in second.notes if n.startswith("replaced")]
    assert note.startswith(f"replaced the earlier report in {out}/ (report.json created {first.created_at}, "
                           f"{len(first.rows)} row")
    assert "report.csv" in note
    assert note not in json.loads((out / "report.json").read_text())["notes"]  # the files are the measurement
    assert sorted(p.name for p in out.iterdir()) == sorted(second.files)  # the lock file went with the bench


def test_a_bench_that_stops_before_writing_removes_the_folder_it_made(tiny_checkpoint, synthetic_csv, tmp_path):
    from fer_edge.benchmarks.bench import run_bench

    out = tmp_path / "a" / "b"
    with pytest.raises(FerEdgeError):
        run_bench([tiny_checkpoint], data=synthetic_csv, split="nosuchsplit", out_dir=out, **BENCH_FAST)
    assert not (tmp_path / "a").exists()


def test_report_merge_notes_the_merged_files_it_replaced(tiny_checkpoint, synthetic_csv, tmp_path):
    from fer_edge.benchmarks.bench import run_bench
    from fer_edge.benchmarks.report import merge_reports

    run_bench([tiny_checkpoint], data=synthetic_csv, out_dir=tmp_path / "b", **BENCH_FAST)
    merge_reports([tmp_path / "b"], tmp_path / "m")
    again = merge_reports([tmp_path / "b"], tmp_path / "m")
    assert any(n.startswith(f"replaced the earlier merged report in {tmp_path / 'm'}/ (merged.json of 1 report")
               for n in again.notes), again.notes


# --- 3: a checkpoint that cannot be written (a full disk) -------------------------------------------------------
def test_train_says_where_to_resume_when_another_file_of_the_epoch_cannot_be_written(synthetic_csv, tmp_path,
                                                                                        monkeypatch, capsys):
    from fer_edge.training import TrainConfig, train
    from fer_edge.training import trainer as trainer_mod

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.out / "metrics.json"))

    monkeypatch.setattr(trainer_mod.Trainer, "_write_metrics", full)
    out = tmp_path / "run"
    with pytest.raises(OSError):  # the error itself is the file system's (the CLI prints it in one line)
        train(TrainConfig(data=str(synthetic_csv), model="fer_nano", out=str(out), epochs=2, batch_size=16,
                          max_steps_per_epoch=1, device="cpu"), progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert f"the last finished epoch is in {out / 'last.pt'} (epoch 1): continue with --resume" in err, err


def _full_disk(monkeypatch, fail_on: int = 1):
    """torch.save failing as on a full disk from its ``fail_on``-th call on (its zip writer's RuntimeError, after
    writing part of the file), and writes through os.write raising ENOSPC as the system would."""
    import torch

    import fer_edge.checkpoint as ck

    real_save = torch.save
    calls = []

    def save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) < fail_on:
            return real_save(obj, f, *a, **k)
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise RuntimeError(TORCH_FULL_DISK)

    def write(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(ck.os, "write", write)
    return calls


def _payload(tiny_checkpoint):
    from fer_edge.checkpoint import load_checkpoint

    return dict(load_checkpoint(tiny_checkpoint).raw)


def test_a_checkpoint_that_cannot_be_written_names_the_file_and_why(tiny_checkpoint, tmp_path, monkeypatch):
    from fer_edge.checkpoint import save_checkpoint

    payload = _payload(tiny_checkpoint)
    _full_disk(monkeypatch)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(tmp_path / "last.pt", payload)
    assert str(e.value) == f"cannot write {tmp_path / 'last.pt'}: No space left on device"
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_a_failed_save_without_a_system_reason_quotes_torch_in_one_line(tiny_checkpoint, tmp_path, monkeypatch):
    import torch

    from fer_edge.checkpoint import save_checkpoint

    payload = _payload(tiny_checkpoint)

    def save(obj, f, *a, **k):
        raise RuntimeError(TORCH_FULL_DISK + "\nframe #0: c10::Error ...\nframe #1: ...")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(tmp_path / "x.pt", payload)
    assert str(e.value) == (f"cannot write {tmp_path / 'x.pt'}: the write failed (torch.save: RuntimeError: "
                            f"{TORCH_FULL_DISK})")
    assert list(tmp_path.iterdir()) == []


def test_train_on_a_full_disk_says_where_to_resume(synthetic_csv, tmp_path, monkeypatch):
    out = tmp_path / "run"
    # epoch 1 writes last.pt and best.pt; epoch 2's last.pt meets the full disk
    _full_disk(monkeypatch, fail_on=3)
    res = invoke("train", "--data", synthetic_csv, "--model", "fer_nano", "--epochs", "3", "--max-steps-per-epoch",
                 "1", "--batch-size", "16", "--out", out, "--no-progress")
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and "enforce fail" not in res.output
    msg = " ".join(res.output.split())
    assert (f"the epoch's files could not be written: the last finished epoch is in {out / 'last.pt'} (epoch 1): "
            f"continue with --resume error: cannot write {out / 'last.pt'}: No space left on device") in msg, msg
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_soup_on_a_full_disk_is_one_error_line(tiny_checkpoint, other_checkpoint, synthetic_csv, tmp_path,
                                               monkeypatch):
    other = other_checkpoint
    out = tmp_path / "soups"
    out.mkdir()
    _full_disk(monkeypatch)
    res = invoke("soup", tiny_checkpoint, other, "--data", synthetic_csv, "--out", out / "soup.pt")
    assert res.exit_code == 1, res.output
    assert f"error: cannot write {out / 'soup.pt'}: No space left on device" in " ".join(res.output.split())
    assert "Traceback" not in res.output and list(out.iterdir()) == []


# --- 4: a re-export killed once its new file replaced the old one ----------------------------------------------
def test_a_reexport_killed_after_its_rename_leaves_no_manifest_vouching_for_the_file(tiny_checkpoint, synthetic_csv,
                                                                                       tmp_path, monkeypatch,
                                                                                       gate_on_synthetic_data):
    from fer_edge.exporters import export, verify_manifest
    from fer_edge.exporters.torchscript import TorchScriptExporter

    out = tmp_path / "out"
    export(tiny_checkpoint, ["torchscript"], ["fp32"], out, val_data=synthetic_csv, data_progress=False)
    export(tiny_checkpoint, ["onnx"], ["fp32"], out, validate=False)
    before = json.loads((out / "manifest.json").read_text())
    (ts,) = [e for e in before["artifacts"] if e["target"] == "torchscript"]
    assert before["complete"] is True and ts["validation"]["status"] == "passed"

    real = TorchScriptExporter.export
    seen: dict[str, dict] = {}

    def killed_after(self, req, precision, out_path):  # the manifest a SIGKILL at each point would leave
        seen["before rename"] = json.loads((out / "manifest.json").read_text())
        files = real(self, req, precision, out_path)
        seen["after rename"] = json.loads((out / "manifest.json").read_text())
        return files

    monkeypatch.setattr(TorchScriptExporter, "export", killed_after)
    export(tiny_checkpoint, ["torchscript"], ["fp32"], out, val_data=synthetic_csv, data_progress=False)
    for when, m in seen.items():
        assert m["complete"] is False, when
        listed = [e for e in m["artifacts"] if e["target"] == "torchscript"]
        assert [e["validation"]["status"] for e in listed] == ["not validated"], when
        assert listed[0]["being_replaced"]["validation"] == ts["validation"], when
        assert [e["validation"] for e in m["artifacts"] if e["target"] == "onnx"] == [  # the others as they were
            e["validation"] for e in before["artifacts"] if e["target"] == "onnx"]
    after = json.loads((out / "manifest.json").read_text())
    assert after["complete"] is True and "being_replaced" not in json.dumps(after)
    assert verify_manifest(out) == []


def test_a_killed_reexport_whose_file_is_untouched_is_listed_again_as_it_was(tiny_checkpoint, synthetic_csv,
                                                                               tmp_path, monkeypatch,
                                                                               gate_on_synthetic_data):
    from fer_edge.exporters import export, verify_manifest
    from fer_edge.exporters.torchscript import TorchScriptExporter

    out = tmp_path / "out"
    export(tiny_checkpoint, ["torchscript"], ["fp32"], out, val_data=synthetic_csv, data_progress=False)
    (ts,) = [e for e in json.loads((out / "manifest.json").read_text())["artifacts"] if e["target"] == "torchscript"]
    left: dict = {}

    def killed(self, req, precision, out_path):  # SIGKILL while converting: the manifest is what is on disk
        left.update(json.loads((out / "manifest.json").read_text()))
        raise RuntimeError("stand-in for the kill")

    monkeypatch.setattr(TorchScriptExporter, "export", killed)
    export(tiny_checkpoint, ["torchscript"], ["fp32"], out, validate=False, raise_on_failure=False)
    monkeypatch.undo()
    (out / "manifest.json").write_text(json.dumps(left))  # as the killed run left it
    again = export(tiny_checkpoint, ["onnx"], ["fp32"], out, validate=False)
    (kept,) = [e for e in again.manifest["artifacts"] if e["target"] == "torchscript"]
    assert kept["validation"] == ts["validation"] and "being_replaced" not in kept
    assert verify_manifest(out) == []


# --- 5: a read-only --out --------------------------------------------------------------------------------------
def test_a_read_only_file_system_is_not_called_permission_denied(tmp_path, monkeypatch):
    import fer_edge.utils as utils

    class Flags:
        f_flag = getattr(os, "ST_RDONLY", 1)

    monkeypatch.setattr(utils.os, "access", lambda *a, **k: False)
    monkeypatch.setattr(utils.os, "statvfs", lambda p: Flags(), raising=False)
    with pytest.raises(FerEdgeError) as e:
        utils.check_writable_dir(tmp_path / "out", "--out", FerEdgeError)
    assert str(e.value) == f"--out {tmp_path / 'out'}: cannot write into {tmp_path} (read-only file system)"


def test_permission_denied_stays_so_on_a_writable_mount(tmp_path, monkeypatch):
    import fer_edge.utils as utils

    class Flags:
        f_flag = 0

    monkeypatch.setattr(utils.os, "access", lambda *a, **k: False)
    monkeypatch.setattr(utils.os, "statvfs", lambda p: Flags(), raising=False)
    with pytest.raises(FerEdgeError, match=r"\(permission denied\)"):
        utils.check_writable_dir(tmp_path / "out", "--out", FerEdgeError)
