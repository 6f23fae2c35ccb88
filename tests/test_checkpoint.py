"""Checkpoint parts: a checkpoint split under a size limit and joined again (fer_edge.checkpoint)."""
from __future__ import annotations

import io

import pytest
import torch

from fer_edge.checkpoint import (PART_FORMAT, SplitInterrupted, join_checkpoint, load_checkpoint, main,
                                 save_checkpoint, split_checkpoint)
from fer_edge.errors import CheckpointError
from fer_edge.models import create_model


def _checkpoint(path, seed=0):
    torch.manual_seed(seed)
    model = create_model("simple_cnn", num_classes=7)
    return save_checkpoint(path, {"model": "simple_cnn", "labels": list("abcdefg"),
                                  "normalization": {"mean": 0.5, "std": 0.25}, "state_dict": model.state_dict(),
                                  "metrics": {"val_accuracy": 0.5}, "resume": {"optimizer": {"x": torch.ones(3)}}})


def test_split_respects_the_limit_and_join_restores_weights_and_metadata(tmp_path):
    src = _checkpoint(tmp_path / "a.pt")
    parts = split_checkpoint(src, tmp_path / "a", 680_000)
    assert len(parts) >= 2 and all(p.stat().st_size <= 680_000 for p in parts)
    joined = load_checkpoint(join_checkpoint(reversed(parts), tmp_path / "joined.pt"))  # any order
    original = load_checkpoint(src)
    assert joined.metrics == original.metrics and joined.labels == original.labels
    assert "resume" not in joined.raw  # optimizer state does not travel
    assert joined.state_dict.keys() == original.state_dict.keys()
    for k, v in original.state_dict.items():
        assert joined.state_dict[k].dtype == v.dtype
        torch.testing.assert_close(joined.state_dict[k], v, rtol=1e-3, atol=1e-4)
    joined.build_model()  # the weights fit the model again


def test_join_reports_every_problem_at_once(tmp_path):
    a = split_checkpoint(_checkpoint(tmp_path / "a.pt"), tmp_path / "a", 680_000)
    b = split_checkpoint(_checkpoint(tmp_path / "b.pt", seed=1), tmp_path / "b", 680_000)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as e:
        join_checkpoint([a[0], a[0], b[1], tmp_path / "junk.pt"], tmp_path / "x.pt")
    msg = str(e.value)
    assert "given twice" in msg and "different checkpoints" in msg and "junk.pt" in msg
    with pytest.raises(CheckpointError, match=r"part\(s\) 0 of 2 missing"):
        join_checkpoint([a[1]], tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_a_tensor_larger_than_a_part_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="alone takes"):
        split_checkpoint(_checkpoint(tmp_path / "a.pt"), tmp_path / "a", 500_000)


def test_command_line_splits_and_joins(tmp_path, capsys):
    src = _checkpoint(tmp_path / "a.pt")
    assert main(["split", str(src), str(tmp_path / "a"), "--max-mb", "0.65"]) == 0
    parts = capsys.readouterr().out.split()
    assert main(["join", *parts, "--out", str(tmp_path / "j.pt")]) == 0
    assert load_checkpoint(tmp_path / "j.pt").model_name == "simple_cnn"
    assert main(["join", parts[0], "--out", str(tmp_path / "k.pt")]) == 1
    assert "missing" in capsys.readouterr().err


def test_a_folder_given_as_a_checkpoint_points_at_the_checkpoints_in_it(tmp_path):
    """A run folder said "checkpoint not found", as if the path did not exist."""
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError, match=r"run is a folder, not a checkpoint: it holds no \.pt checkpoint"):
        load_checkpoint(run)
    for name in ("last.pt", "best.pt"):
        _checkpoint(run / name)
    with pytest.raises(CheckpointError, match=r"run is a folder, not a checkpoint: give a checkpoint file in it, "
                                              r"e\.g\. .*run/best\.pt"):
        load_checkpoint(run)


def test_an_artifact_or_a_foreign_file_is_named_for_what_it_is(tmp_path):
    onnx_file = tmp_path / "fer_nano_int8.onnx"
    onnx_file.write_bytes(b"\x08\x07")
    with pytest.raises(CheckpointError, match="is an exported onnx artifact, not a checkpoint .*fer-edge bench"):
        load_checkpoint(onnx_file)
    zipped = tmp_path / "other.pt"
    torch.save({"x": torch.nn.Linear(2, 2)}, zipped)  # a pickled module: weights_only refuses it
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as e:
        load_checkpoint(zipped)
    assert "\n" not in str(e.value)  # torch's many lines of advice cut to the first
    # and not its advice to load with weights_only=False: the unpickler's reason instead
    assert "weights_only` set to `False`" not in str(e.value) and "Unsupported global" in str(e.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match=r"refused it \(.+\): not a PyTorch checkpoint"):
        load_checkpoint(garbage)
    # the other ways a bad file fails inside torch.load (KeyError: 101, EOFError, OSError...) say what it means
    real = tmp_path / "real.pt"
    torch.save({"x": torch.zeros(1000)}, real)
    for name, content in (("text.pt", b"hello\n"), ("empty.pt", b""), ("cut.pt", real.read_bytes()[:900])):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=r"not a readable checkpoint \(corrupted, truncated, or not a "
                                                  r"PyTorch checkpoint at all; torch.load said \w+"):
            load_checkpoint(tmp_path / name)


def test_join_refuses_a_folder_as_out_and_leaves_it_alone(tmp_path, capsys):
    parts = split_checkpoint(_checkpoint(tmp_path / "a.pt"), tmp_path / "p" / "teacher", 680_000)
    folder = tmp_path / "keep.pt"  # a folder whose name looks like a checkpoint's: atomic writes would replace it
    folder.mkdir()
    (folder / "precious.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"is a folder: give the joined checkpoint's file name, e\.g\. "
                                              r".*keep\.pt/teacher\.pt"):
        join_checkpoint(parts, folder)
    assert (folder / "precious.txt").read_text() == "x" and len(list(folder.iterdir())) == 1
    assert main(["join", *map(str, parts), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is a folder" in err and "Traceback" not in err
    (tmp_path / "file").write_text("x")
    assert main(["join", *map(str, parts), "--out", str(tmp_path / "file" / "j.pt")]) == 1
    assert "which is a file" in capsys.readouterr().err


@pytest.mark.parametrize("max_mb", ["nan", "inf", "-1", "0"])
def test_split_refuses_a_size_that_is_not_a_positive_number(tmp_path, capsys, max_mb):
    src = _checkpoint(tmp_path / "a.pt")
    assert main(["split", str(src), str(tmp_path / "a"), "--max-mb", max_mb]) == 2  # a usage error
    err = capsys.readouterr().err
    assert err.startswith("error: --max-mb must be a positive number of MiB") and "Traceback" not in err
    assert not list(tmp_path.glob("a.part*"))
    with pytest.raises(CheckpointError, match="must be a finite number" if max_mb in ("nan", "inf") else "too small"):
        split_checkpoint(src, tmp_path / "a", float(max_mb))  # the library refuses it too


def test_a_new_split_removes_the_parts_an_earlier_split_left_at_that_prefix(tmp_path, capsys):
    src = _checkpoint(tmp_path / "a.pt")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "s.part7.pt").write_text("not a part: not ours to remove")
    (tmp_path / "p" / "s2.part1.pt").write_text("another prefix")
    assert main(["split", str(src), str(tmp_path / "p" / "s"), "--max-mb", "0.65"]) == 0
    assert len(capsys.readouterr().out.split()) == 2
    assert main(["split", str(src), str(tmp_path / "p" / "s"), "--max-mb", "4"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == [str(tmp_path / "p" / "s.part0.pt")]
    assert f"removed {tmp_path / 'p' / 's.part1.pt'}" in err
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["s.part0.pt", "s.part7.pt", "s2.part1.pt"]
    parts = sorted(str(p) for p in (tmp_path / "p").glob("s.part[0-6].pt"))
    assert main(["join", *parts, "--out", str(tmp_path / "j.pt")]) == 0
    assert load_checkpoint(tmp_path / "j.pt").model_name == "simple_cnn"


def test_join_refuses_parts_of_different_splits_of_one_checkpoint(tmp_path):
    src = _checkpoint(tmp_path / "a.pt")
    two = split_checkpoint(src, tmp_path / "two", 680_000)
    one = split_checkpoint(src, tmp_path / "one", 4 << 20)
    assert (len(two), len(one)) == (2, 1)
    with pytest.raises(CheckpointError) as e:
        join_checkpoint([one[0], two[1]], tmp_path / "x.pt")  # part 0 says 1 part, part 1 says 2
    msg = str(e.value)
    assert "different splits" in msg and f"{one[0]} says 1" in msg and f"{two[1]} says 2" in msg
    forged = torch.load(two[1], weights_only=True)
    forged.update(index=5)
    torch.save(forged, tmp_path / "forged.pt")
    with pytest.raises(CheckpointError, match=r"part\(s\) 5 given, but the checkpoint has 2 \(0 to 1\)"):
        join_checkpoint([*two, tmp_path / "forged.pt"], tmp_path / "x.pt")
    torch.save({"format": PART_FORMAT, "index": 0}, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match="damaged.pt: a damaged checkpoint part"):
        join_checkpoint([tmp_path / "damaged.pt", two[1]], tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_labels_that_disagree_with_the_weights_say_so(tiny_checkpoint, tmp_path):
    """A checkpoint whose label list was edited is named as such, not blamed on changed model defaults."""
    raw = torch.load(tiny_checkpoint, weights_only=True)
    raw["labels"] = list(raw["labels"])[:6]
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "edited.pt").build_model()
    assert "lists 6 labels" in str(e.value) and "weights give 7 outputs" in str(e.value)
    assert "defaults" not in str(e.value)
    # weights that do not fit for another reason keep the defaults message
    raw = torch.load(tiny_checkpoint, weights_only=True)
    raw["model_kwargs"] = {"stem": 8}
    torch.save(raw, tmp_path / "kwargs.pt")
    with pytest.raises(CheckpointError, match="do not fit fer_nano.*defaults change"):
        load_checkpoint(tmp_path / "kwargs.pt").build_model()


@pytest.mark.parametrize("labels, said", [
    ("angry,disgust", "expected a list of class names, got str"),
    ([], "the list is empty"),
    (["angry", ""], "every class name must be a non-empty string"),
    (["angry", 3], "every class name must be a non-empty string"),
    (["happy", "Happy", "sad", "sad"], "a class is named twice ('happy' and 'Happy', 'sad')"),
])
def test_unusable_label_lists_are_refused_when_the_checkpoint_is_read(tiny_checkpoint, tmp_path, labels, said):
    raw = torch.load(tiny_checkpoint, weights_only=True)
    raw["labels"] = labels
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "bad.pt")
    assert "are not usable" in str(e.value) and said in str(e.value)


def test_an_atomic_write_never_replaces_a_folder_with_a_file(tmp_path):
    """A --json or --out naming an existing folder deleted the folder and put the file in its place."""
    from fer_edge.utils import atomic_path, write_json_atomic

    folder = tmp_path / "precious"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("keep")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        write_json_atomic(folder, {"a": 1})
    assert (folder / "notes.txt").read_text() == "keep" and (folder / "sub").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]  # no debris
    # a folder artifact (an .mlpackage) still replaces an earlier one
    pkg = tmp_path / "m.mlpackage"
    pkg.mkdir()
    (pkg / "old").write_text("old")
    with atomic_path(pkg) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in pkg.iterdir()) == ["new"]


def test_an_atomic_write_into_a_read_only_folder_names_the_file_asked_for(tmp_path, monkeypatch):
    """QA: `error: out/.tmp-manifest-un23_jn_.json: Permission denied` named a temporary file that never existed."""
    import tempfile

    from fer_edge.utils import write_json_atomic

    def read_only(prefix="", suffix="", dir=None):  # what mkstemp raises in a folder without write permission
        raise PermissionError(13, "Permission denied", f"{dir}/{prefix}abc123{suffix}")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(PermissionError) as e:
        write_json_atomic(tmp_path / "manifest.json", {"a": 1})
    assert e.value.filename == str(tmp_path / "manifest.json") and e.value.strerror == "Permission denied"
    assert ".tmp-" not in str(e.value)


@pytest.mark.parametrize("links", [True, False], ids=["hard-link", "no-hard-links"])
def test_an_atomic_write_without_overwrite_never_replaces_a_file_made_meanwhile(tmp_path, monkeypatch, links):
    """``os.replace`` replaced a file another process created at the destination while the output was written."""
    import errno
    import os

    from fer_edge.utils import atomic_path

    if not links:  # a file system without hard links: the check-then-rename path
        def no_link(src, dst):
            raise OSError(errno.EPERM, "Operation not permitted")
        monkeypatch.setattr(os, "link", no_link)
    dest = tmp_path / "out.pt"
    with pytest.raises(FileExistsError):
        with atomic_path(dest, overwrite=False) as tmp:
            tmp.write_text("ours")
            dest.write_text("theirs")  # another process, meanwhile
    assert dest.read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pt"]  # no debris
    dest.unlink()
    with atomic_path(dest, overwrite=False) as tmp:
        tmp.write_text("ours")
    assert dest.read_text() == "ours" and sorted(p.name for p in tmp_path.iterdir()) == ["out.pt"]


@pytest.mark.parametrize("change, message", [
    ({"normalization": {"mean": 0.5, "std": 0.0}}, r"normalization needs a finite mean and a positive std"),
    ({"normalization": {"mean": float("nan"), "std": 0.2}}, r"normalization needs a finite mean"),
    ({"normalization": {"mean": 0.5}}, r"normalization must be \{'mean': \.\., 'std': \.\.\}"),
    ({"metrics": [1, 2]}, r"metrics is a list, not a dict"),
    ({"epoch": "3"}, r"epoch '3' is not a whole number"),
])
def test_a_checkpoint_with_unusable_fields_is_refused_when_loaded(tmp_path, change, message):
    """A zero std was evaluated silently (every image the same input: accuracy 1/7); a list of metrics crashed
    with a ValueError traceback."""
    raw = torch.load(_checkpoint(tmp_path / "a.pt"), weights_only=True)
    save_checkpoint(tmp_path / "b.pt", {**raw, **change})
    with pytest.raises(CheckpointError, match=rf"b\.pt: not a usable checkpoint: its {message}"):
        load_checkpoint(tmp_path / "b.pt")


def test_split_refuses_a_part_named_as_the_checkpoint_itself_and_leaves_it_intact(tmp_path, capsys):
    folder = tmp_path / "sp"
    folder.mkdir()
    src = _checkpoint(folder / "z.part0.pt")  # part 0 of prefix sp/z is the checkpoint being split
    before = src.read_bytes()
    assert main(["split", str(src), str(folder / "z"), "--max-mb", "0.65"]) == 1
    err = capsys.readouterr().err
    assert "is the checkpoint being split" in err and "choose another PREFIX" in err
    assert src.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["z.part0.pt"]
    load_checkpoint(src)  # still the checkpoint


def test_split_checks_every_part_path_before_writing_any(tmp_path):
    src = _checkpoint(tmp_path / "pt.pt")
    (tmp_path / "sp2" / "pt.part1.pt").mkdir(parents=True)  # in the way of the second part, not the first
    with pytest.raises(CheckpointError, match=r"pt\.part1\.pt is a folder: remove it or choose another PREFIX"):
        split_checkpoint(src, tmp_path / "sp2" / "pt", 680_000)
    assert not (tmp_path / "sp2" / "pt.part0.pt").exists()  # nothing written


def test_split_into_a_file_and_join_of_missing_parts_say_so_plainly(tmp_path, capsys):
    src = _checkpoint(tmp_path / "a.pt")
    (tmp_path / "d.csv").write_text("x")
    assert main(["split", str(src), str(tmp_path / "d.csv" / "t"), "--max-mb", "1"]) == 1
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "choose another PREFIX" in err and "another the" not in err
    assert main(["join", str(tmp_path / "gone.part0.pt"), "--out", str(tmp_path / "j.pt")]) == 1
    err = capsys.readouterr().err
    assert "gone.part0.pt: not found" in err and "torch.load" not in err and "corrupted" not in err


def test_a_part_given_as_a_checkpoint_says_how_to_join_the_parts(tmp_path):
    """`fer-edge eval --model OUT/teacher.part0.pt` said only "not a fer-edge checkpoint"."""
    parts = split_checkpoint(_checkpoint(tmp_path / "a.pt"), tmp_path / "p" / "teacher", 680_000)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(parts[0])
    msg = str(e.value)
    assert "a part of a split checkpoint" in msg
    prefix = tmp_path / "p" / "teacher"
    assert f"python -m fer_edge.checkpoint join {prefix}.part*.pt --out {prefix}.pt`" in msg
    # a name holding ".part", a space (quoted for the shell), and a joined file already there (never suggested)
    parts = split_checkpoint(_checkpoint(tmp_path / "b.pt"), tmp_path / "sp two" / "my.partial", 680_000)
    (tmp_path / "sp two" / "my.partial.pt").write_bytes(b"keep")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(parts[0])
    prefix = tmp_path / "sp two" / "my.partial"
    assert f"join '{prefix}'.part*.pt --out '{prefix}.joined.pt'`" in str(e.value)


@pytest.mark.parametrize("state_dict, message", [
    ([1, 2], r"its state_dict is a list, not a dict of tensors"),
    ("weights", r"its state_dict is a str, not a dict of tensors"),
    ("strings", r"its state_dict is not a dict of tensors: (\d+) of its \1 entries are not a named tensor "
                r"\(e\.g\. 'features\.0\.0\.weight' is a str\)"),
    ({1: torch.ones(1)}, r"its state_dict is not a dict of tensors: 1 of its 1 entries are not a named tensor "
                         r"\(e\.g\. key 1 is a int, not a name\)"),
])
def test_a_state_dict_that_is_not_a_dict_of_tensors_is_refused_when_loaded(tmp_path, state_dict, message):
    """It passed load_checkpoint and crashed later with an AttributeError traceback ('str' object has no attribute
    'shape', 'list' object has no attribute 'get'), in export, eval and load_runtime alike."""
    raw = torch.load(_checkpoint(tmp_path / "a.pt"), weights_only=True)
    if state_dict == "strings":
        state_dict = {k: "x" for k in raw["state_dict"]}
    save_checkpoint(tmp_path / "b.pt", {**raw, "state_dict": state_dict})
    with pytest.raises(CheckpointError, match=rf"b\.pt: not a usable checkpoint: {message}"):
        load_checkpoint(tmp_path / "b.pt")


def _flip_a_bit_in_a_tensor(part, name):
    """Flip one bit inside tensor ``name``'s data in the file ``part`` (torch stores tensor data verbatim)."""
    data = bytearray(part.read_bytes())
    tensor = torch.load(part, weights_only=True)["state_dict"][name]
    raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0
    data[at + len(raw) // 2] ^= 0x10
    part.write_bytes(bytes(data))


def test_join_refuses_a_part_whose_tensor_data_was_damaged(tmp_path, capsys):
    """A flipped bit in a part's tensor data loaded silently (torch.load checks no checksum) and the joined
    checkpoint carried the wrong weight."""
    parts = split_checkpoint(_checkpoint(tmp_path / "a.pt"), tmp_path / "a", 680_000)
    name = max(torch.load(parts[1], weights_only=True)["state_dict"].items(), key=lambda kv: kv[1].numel())[0]
    _flip_a_bit_in_a_tensor(parts[1], name)
    torch.load(parts[1], weights_only=True)  # still loads: only the hash tells
    assert main(["join", *map(str, parts), "--out", str(tmp_path / "j.pt")]) == 1
    err = capsys.readouterr().err
    assert f"{parts[1]}: its contents do not match the SHA-256 it was written with" in err
    assert str(parts[0]) not in err and not (tmp_path / "j.pt").exists()


def test_join_names_tensors_missing_from_or_extra_to_the_parts_without_a_traceback(tmp_path):
    """A part with a tensor taken out or added (its own hash made to fit) joined into a checkpoint lacking a
    weight, or crashed with a KeyError traceback."""
    from fer_edge.checkpoint import _digest

    parts = split_checkpoint(_checkpoint(tmp_path / "a.pt"), tmp_path / "a", 680_000)
    part = torch.load(parts[1], weights_only=True)
    gone = next(iter(part["state_dict"]))
    part["state_dict"]["stowaway.weight"] = part["state_dict"].pop(gone)
    part["sha256"] = _digest(part["state_dict"])
    torch.save(part, parts[1])
    with pytest.raises(CheckpointError) as e:
        join_checkpoint(parts, tmp_path / "j.pt")
    msg = str(e.value)
    assert f"{parts[1]}: not the part 1 that {parts[0]} lists" in msg
    assert "the parts hold 1 tensor(s) the checkpoint does not list, e.g. 'stowaway.weight'" in msg
    assert f"the parts lack 1 tensor(s) the checkpoint lists, e.g. {gone!r}" in msg
    assert not (tmp_path / "j.pt").exists()


def _as_earlier_format(part, version=1):
    """Rewrite a part as an earlier fer-edge wrote it: format part/1 carried no hashes, part/2 hashes that did not
    cover the parts' headers."""
    raw = torch.load(part, weights_only=True)
    if version == 1:
        raw = {k: v for k, v in raw.items() if k not in ("sha256", "parts_sha256")}
    torch.save({**raw, "format": f"fer-edge-checkpoint-part/{version}"}, part)


@pytest.mark.parametrize("version", [1, 2])
def test_parts_of_an_earlier_part_format_are_named_and_joined_only_when_asked(tmp_path, capsys, version):
    """QA: parts an earlier fer-edge wrote could not be joined at all, though their checkpoint may be gone (left on
    a lent GPU machine); a new split at their prefix left the earlier split's extra parts in place. Format 2's
    parts were called damaged ("copy it again"): their hashes covered less than this version's."""
    src = _checkpoint(tmp_path / "a.pt")
    parts = split_checkpoint(src, tmp_path / "a", 680_000)
    for p in parts:
        _as_earlier_format(p, version)
    with pytest.raises(CheckpointError, match=r"a\.part0\.pt: a checkpoint part written by an earlier fer-edge "
                                              r".*split the checkpoint again.*join them unverified with --legacy-parts"):
        join_checkpoint(parts, tmp_path / "j.pt")
    with pytest.raises(CheckpointError, match="a part of a split checkpoint"):  # still recognised as a part
        load_checkpoint(parts[0])
    assert main(["join", *map(str, parts), "--out", str(tmp_path / "j.pt"), "--legacy-parts"]) == 0
    joined, original = load_checkpoint(tmp_path / "j.pt"), load_checkpoint(src)
    assert joined.state_dict.keys() == original.state_dict.keys() and joined.metrics == original.metrics
    capsys.readouterr()
    assert main(["split", str(src), str(tmp_path / "a"), "--max-mb", "4"]) == 0  # one part now
    assert f"removed {parts[1]}" in capsys.readouterr().err and not parts[1].exists()


def test_part0_metadata_counts_against_its_limit(tmp_path):
    """A checkpoint with large metadata (a long history in train_config) wrote a part 0 over the limit, found only
    after writing it, and left it on disk."""
    raw = torch.load(_checkpoint(tmp_path / "a.pt"), weights_only=True)
    raw["train_config"] = {"notes": "x" * 300_000}
    src = save_checkpoint(tmp_path / "big.pt", raw)
    parts = split_checkpoint(src, tmp_path / "b", 680_000)
    assert all(p.stat().st_size <= 680_000 for p in parts)
    assert load_checkpoint(join_checkpoint(parts, tmp_path / "j.pt")).train_config == raw["train_config"]
    raw["train_config"] = {"notes": "x" * 700_000}  # the metadata alone is over the limit
    src = save_checkpoint(tmp_path / "huge.pt", raw)
    with pytest.raises(CheckpointError, match="its metadata alone .* takes"):
        split_checkpoint(src, tmp_path / "h", 680_000)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("h.", ".tmp"))) == []


def test_weights_beyond_float16_range_survive_the_split(tmp_path):
    """Float16 turned |x| > 65504 into infinities: the joined checkpoint held inf where the original was finite."""
    raw = torch.load(_checkpoint(tmp_path / "a.pt"), weights_only=True)
    name = next(k for k, v in raw["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    raw["state_dict"][name][0] = 1e6
    src = save_checkpoint(tmp_path / "big.pt", raw)
    parts = split_checkpoint(src, tmp_path / "b", 680_000)
    joined = load_checkpoint(join_checkpoint(parts, tmp_path / "j.pt")).state_dict
    assert joined[name].dtype == torch.float32 and torch.equal(joined[name], raw["state_dict"][name])
    assert all(torch.isfinite(v).all() for v in joined.values() if v.is_floating_point())


@pytest.mark.parametrize("prefix", ["", "folder/", "folder/."])
def test_split_refuses_a_prefix_that_names_no_file(tmp_path, capsys, monkeypatch, prefix):
    """An empty PREFIX (or a folder) wrote hidden files such as folder/.part0.pt."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    src = _checkpoint(tmp_path / "a.pt")
    assert main(["split", str(src), prefix, "--max-mb", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: PREFIX") and "names no file" in err and "give a name" in err
    with pytest.raises(CheckpointError, match="names no file"):
        split_checkpoint(src, prefix, 1 << 20)
    assert not [p for p in tmp_path.rglob("*") if ".part" in p.name]


def test_an_interrupted_split_leaves_the_earlier_parts_as_they_were(tmp_path, capsys, monkeypatch):
    """An interrupt while parts were written left a .tmp file and a mix of new and old parts."""
    src = _checkpoint(tmp_path / "a.pt")
    old = split_checkpoint(_checkpoint(tmp_path / "b.pt", seed=1), tmp_path / "p" / "t", 680_000)
    before = [p.read_bytes() for p in old]
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:  # while part 0 is written (the first call measures the metadata in memory)
            raise KeyboardInterrupt
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    assert main(["split", str(src), str(tmp_path / "p" / "t"), "--max-mb", "0.65"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == f"interrupted: no part was written; the files at {tmp_path / 'p' / 't'}.part<i>.pt are as they were"
    assert [p.read_bytes() for p in old] == before
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["t.part0.pt", "t.part1.pt"]


def test_an_interrupt_while_parts_are_renamed_is_held_until_all_are_in_place(tmp_path, capsys, monkeypatch):
    import os
    import signal

    src = _checkpoint(tmp_path / "a.pt")
    real_replace = os.replace

    def replace(a, b):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C between the renames
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(SplitInterrupted) as e:
        split_checkpoint(src, tmp_path / "t", 680_000)
    assert [p.name for p in e.value.written] == ["t.part0.pt", "t.part1.pt"]
    monkeypatch.setattr(os, "replace", real_replace)
    assert load_checkpoint(join_checkpoint(e.value.written, tmp_path / "j.pt")).model_name == "simple_cnn"
    assert not list(tmp_path.glob(".tmp-*"))


def test_an_interrupted_join_says_its_out_was_not_written(tmp_path, capsys, monkeypatch):
    import fer_edge.checkpoint as ck

    parts = split_checkpoint(_checkpoint(tmp_path / "a.pt"), tmp_path / "t", 680_000)
    (tmp_path / "j.pt").write_bytes(b"old")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "save_checkpoint", interrupted)
    assert main(["join", *map(str, parts), "--out", str(tmp_path / "j.pt")]) == 130
    assert capsys.readouterr().err.strip() == f"interrupted: {tmp_path / 'j.pt'} was not written (the file there is as it was)"
    assert (tmp_path / "j.pt").read_bytes() == b"old"


def test_join_of_part0_alone_says_only_that_a_part_is_missing(tmp_path):
    parts = split_checkpoint(_checkpoint(tmp_path / "a.pt"), tmp_path / "a", 680_000)
    with pytest.raises(CheckpointError) as e:
        join_checkpoint(parts[:1], tmp_path / "j.pt")
    assert str(e.value) == "cannot join the checkpoint parts:\n  part(s) 1 of 2 missing"


def test_parts_get_the_mode_of_any_new_file(tmp_path):
    """Parts were written owner-only (0600, the temporary file's mode) where every other output takes the umask's."""
    import os

    old = os.umask(0o022)
    try:
        parts = split_checkpoint(_checkpoint(tmp_path / "a.pt"), tmp_path / "a", 680_000)
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in parts} == {oct(0o644)}


def _find_and_change(path, old: bytes, new: bytes):
    data = path.read_bytes()
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, new))


def test_damage_to_part0s_record_of_the_other_parts_is_blamed_on_part0(tmp_path):
    """QA: a changed digit in part 0's list of the other parts' hashes was reported as part 1 being from another
    split; part 0's hash now covers the list (and every part's hash its group, index and count)."""
    parts = split_checkpoint(_checkpoint(tmp_path / "a.pt"), tmp_path / "a", 680_000)
    listed = torch.load(parts[0], weights_only=True)["parts_sha256"][1]
    _find_and_change(parts[0], listed.encode(), ("0" if listed[0] != "0" else "1").encode() + listed[1:].encode())
    with pytest.raises(CheckpointError) as e:
        join_checkpoint(parts, tmp_path / "j.pt")
    assert f"{parts[0]}: its contents do not match the SHA-256" in str(e.value)
    assert str(parts[1]) not in str(e.value)


def test_unusual_tensors_split_and_join_to_their_own_values(tmp_path):
    """QA: a tensor name holding a lone surrogate crashed split with a UnicodeEncodeError; a view of a larger
    tensor was written with its whole storage (parts over the limit)."""
    raw = torch.load(_checkpoint(tmp_path / "a.pt"), weights_only=True)
    big = torch.randn(1000, 1000, dtype=torch.float64)
    raw["state_dict"].update({"bad\ud800name": torch.ones(3), "view": big[:2, :3], "i": torch.arange(5),
                              "b": torch.tensor([True, False]), "s": torch.tensor(2.5), "e": torch.empty(0, 4)})
    src = save_checkpoint(tmp_path / "odd.pt", raw)
    parts = split_checkpoint(src, tmp_path / "o", 680_000)
    assert all(p.stat().st_size <= 680_000 for p in parts)
    joined = load_checkpoint(join_checkpoint(parts, tmp_path / "j.pt")).state_dict
    for k in ("bad\ud800name", "view", "i", "b", "s", "e"):
        assert joined[k].dtype == raw["state_dict"][k].dtype and joined[k].shape == raw["state_dict"][k].shape
        torch.testing.assert_close(joined[k], raw["state_dict"][k], rtol=1e-3, atol=1e-3)


def test_an_interrupt_after_the_parts_are_in_place_says_so(tmp_path, capsys, monkeypatch):
    """QA: Ctrl-C while the part paths were printed said "no part was written" though every part was in place."""
    import builtins

    src = _checkpoint(tmp_path / "a.pt")
    real_print = builtins.print

    def print_then_interrupt(*a, **k):
        if k.get("file") is None:
            raise KeyboardInterrupt
        return real_print(*a, **k)

    monkeypatch.setattr(builtins, "print", print_then_interrupt)
    assert main(["split", str(src), str(tmp_path / "t"), "--max-mb", "0.65"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted after every part was written: ") and "no part was written" not in err


def test_a_failed_split_removes_the_folders_it_made(tmp_path, monkeypatch):
    """QA: an interrupted or failed split left the new folders of PREFIX behind, though nothing was written."""
    real_save = torch.save

    def interrupted(obj, f, *a, **k):
        if not isinstance(f, io.BytesIO):  # the metadata's size is measured in memory first
            raise KeyboardInterrupt
        return real_save(obj, f, *a, **k)

    src = _checkpoint(tmp_path / "a.pt")
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(SplitInterrupted) as e:
        split_checkpoint(src, tmp_path / "new" / "deeper" / "t", 680_000)
    assert e.value.written == [] and not (tmp_path / "new").exists()
    monkeypatch.setattr(torch, "save", real_save)


def test_a_part_limit_too_small_for_anything_is_a_usage_error(tmp_path, capsys):
    src = _checkpoint(tmp_path / "a.pt")
    assert main(["split", str(src), str(tmp_path / "a"), "--max-mb", "0.01"]) == 2
    assert "too small to hold anything" in capsys.readouterr().err


@pytest.mark.parametrize("field, value", [("parts_sha256", 5), ("parts_sha256", {"a": 1}), ("group", ["x"]),
                                          ("index", True), ("sha256", 3)])
def test_a_garbled_part_header_is_named_without_a_traceback(tmp_path, field, value):
    """QA: part 0's parts_sha256 as a number (or a group as a list) crashed join with a TypeError traceback."""
    parts = split_checkpoint(_checkpoint(tmp_path / "a.pt"), tmp_path / "a", 680_000)
    raw = torch.load(parts[0], weights_only=True)
    raw[field] = value
    torch.save(raw, parts[0])
    with pytest.raises(CheckpointError, match=rf"a\.part0\.pt: a damaged checkpoint part \(lacks or garbles {field}\)"):
        join_checkpoint(parts, tmp_path / "j.pt")


def test_a_split_with_one_part_in_an_earlier_format_joins_with_legacy_parts(tmp_path):
    """QA: part 1 in the earlier format beside this version's part 0 was called a part of another split."""
    parts = split_checkpoint(_checkpoint(tmp_path / "a.pt"), tmp_path / "a", 680_000)
    _as_earlier_format(parts[1])
    with pytest.raises(CheckpointError, match="a\\.part1\\.pt: a checkpoint part written by an earlier fer-edge"):
        join_checkpoint(parts, tmp_path / "j.pt")
    assert load_checkpoint(join_checkpoint(parts, tmp_path / "j.pt", legacy=True)).model_name == "simple_cnn"
