"""QA round 4 of eval, soup and the data fingerprint: the same images in another order (the CSV's Training and an
image folder's train) are the same data; --bn recompute on the validation split is said; an ensemble of one model's
weights in two files is refused; predictions outside the classes are refused; README's ship commands give
weights.json's metrics."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_edge.checkpoint import load_checkpoint, save_checkpoint
from fer_edge.data import load_split, loading
from fer_edge.data.synthetic import write_csv
from fer_edge.errors import CheckpointError, FerEdgeError
from fer_edge.metrics import classification_metrics, confusion_matrix
from fer_edge.training import evaluate
from fer_edge.training.soup import make_soup
from fer_edge.training.trainer import data_fingerprint, same_data, same_images
from test_eval_ensemble import _variant  # a perturbed copy of a checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _old_style(fp: dict) -> dict:
    """A fingerprint as checkpoints recorded it before ``unordered_sha256`` (the shipped weights' records)."""
    return {k: v for k, v in fp.items() if k != "unordered_sha256"}


def _with_train_record(src: Path, dst: Path, train_record: dict) -> Path:
    raw = torch.load(src, weights_only=True)
    raw["data"] = {"train": train_record}
    return save_checkpoint(dst, {k: v for k, v in raw.items() if k not in ("format", "fer_edge_version")})


@pytest.fixture(scope="module")
def reversed_csv(synthetic_arrays, tmp_path_factory) -> Path:
    """The synthetic CSV with each split's rows in reverse order: FER2013's CSV orders its rows otherwise than
    the image folders made from it order their files."""
    return write_csv(tmp_path_factory.mktemp("qa4_rev") / "fer2013.csv.gz",
                     {k: (im[::-1].copy(), lab[::-1].copy()) for k, (im, lab) in synthetic_arrays.items()})


def test_the_same_images_in_another_order_are_the_same_data(reversed_csv, synthetic_csv, synthetic_folder):
    """QA: the CSV's Training and images/train hold the same (image, label) pairs in another order; the
    order-dependent sha256 told them apart, so eval of a folder-trained model on the CSV's Training had no note."""
    csv = data_fingerprint(load_split(reversed_csv, "Training", progress=False))
    folder = data_fingerprint(load_split(synthetic_folder, "train", progress=False))
    assert csv["sha256"] != folder["sha256"]  # the rows are in another order than the files
    # a reordered copy in the same format holds the same images too (README: "in any order and either form") ...
    in_order = data_fingerprint(load_split(synthetic_csv, "Training", progress=False))
    assert in_order["unordered_sha256"] == csv["unordered_sha256"] and same_images(in_order, csv)
    assert not same_data(in_order, csv)  # ... but not the run's data for --resume (a seeded run shuffles by position)
    assert csv["unordered_sha256"] == folder["unordered_sha256"] and csv["n"] == folder["n"]
    assert same_images(folder, csv) and same_images(csv, folder)
    # --resume and the leaderboard's reuse ask for the run's order too: the other format is other data there
    assert not same_data(folder, csv) and not same_data(_old_style(folder), csv)
    other = data_fingerprint(load_split(reversed_csv, "PublicTest", progress=False))
    assert not same_images(folder, other) and not same_images(csv, other)
    # a record from before the order-free digest: of the other format, judged by split (or alias) and count ...
    assert same_images(_old_style(folder), csv) and same_images(_old_style(csv), folder)
    assert not same_images(_old_style(folder), other)  # another split
    assert not same_images(_old_style(folder), {**csv, "n": csv["n"] - 1})  # another count
    # ... and of the same format, by its hash as before (the folder's files order their images)
    assert not same_images(_old_style(folder), {**folder, "sha256": "0" * 64})
    # across formats, both with the order-free digest: it decides, whatever the split is called
    assert not same_images(folder, {**csv, "unordered_sha256": "1" * 64})
    assert not same_images(folder, {**csv, "n": csv["n"] - 1})


@pytest.mark.parametrize("old", [False, True], ids=["new-record", "old-record"])
def test_eval_on_the_csv_of_a_model_trained_on_the_folder_notes_it(tiny_checkpoint, reversed_csv, synthetic_folder,
                                                                     tmp_path, old):
    """The shipped weights recorded the folder's train (sha256 only): evaluating them on the CSV's Training must
    say it is training data, as on the folder."""
    fp = data_fingerprint(load_split(synthetic_folder, "train", progress=False))
    ck = _with_train_record(tiny_checkpoint, tmp_path / "best.pt", _old_style(fp) if old else fp)
    r = evaluate(ck, reversed_csv, "Training", device="cpu", limit=20, progress=False)
    assert r.notes and r.notes[0].startswith(f"Training is training data ({ck} trained on it)"), r.notes
    assert evaluate(ck, reversed_csv, "PublicTest", device="cpu", progress=False).notes == []


def test_a_cache_entry_without_the_order_free_digest_still_gives_it(synthetic_csv, tmp_path, monkeypatch):
    """Entries written before ``unordered_sha256`` keep working (the cache version is unchanged): the digest is
    computed from the cached arrays."""
    monkeypatch.setenv("FER_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    first = load_split(synthetic_csv, "Training", progress=False).fingerprint
    (entry,) = (tmp_path / "cache" / "data").glob("csv-*.npz")
    with np.load(entry, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"][()]))
    for info in meta["splits"].values():
        del info["unordered_sha256"]
    with open(entry, "wb") as f:  # as an older fer-edge wrote it
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    monkeypatch.setattr(loading, "_csv_decode", lambda *a: pytest.fail("the old entry was not used"))
    again = load_split(synthetic_csv, "Training", progress=False).fingerprint
    assert again["unordered_sha256"] == first["unordered_sha256"] and again["sha256"] == first["sha256"]


@pytest.fixture(scope="module")
def bn_ingredients(tiny_checkpoint, tmp_path_factory):
    """Two perturbed copies of the tiny fer_nano (it has BatchNorm), with the same normalisation: soup-able."""
    d = tmp_path_factory.mktemp("qa4_soup")
    return [_variant(tiny_checkpoint, d / f"{s}.pt", noise=0.05, seed=s, mean=0.5, std=0.25) for s in (1, 2)]


def test_soup_notes_batchnorm_statistics_measured_on_its_validation_split(bn_ingredients, synthetic_csv, tmp_path):
    """QA: ``--bn recompute --split PublicTest --val-split PublicTest`` scored the soup on the images its BatchNorm
    statistics came from, without the note ``--val-split Training`` gets."""
    r = make_soup(bn_ingredients, tmp_path / "v.pt", synthetic_csv, split="PublicTest", val_split="PublicTest",
                  bn="recompute", progress=False)
    note = [n for n in r.notes if "is training data" in n]
    assert note and "--bn recompute measured the BatchNorm statistics on it): the soup is scored on images its " \
        "BatchNorm statistics were measured on" in note[0], r.notes
    assert load_checkpoint(r.path).data["train"]["split"] == "PublicTest"  # so eval of the soup says so too


def test_ensemble_refuses_two_files_with_the_same_weights(tiny_checkpoint, synthetic_csv, tmp_path):
    """QA: a run's best.pt and last.pt (its resume entry: other bytes) hold one model; eval counted it twice."""
    raw = torch.load(tiny_checkpoint, weights_only=True)
    payload = {k: v for k, v in raw.items() if k not in ("format", "fer_edge_version")}
    best = save_checkpoint(tmp_path / "best.pt", payload)
    last = save_checkpoint(tmp_path / "last.pt", {**payload, "resume": {"epoch": 1}})
    assert best.read_bytes() != last.read_bytes()
    with pytest.raises(CheckpointError, match=f"holds the same weights as {best}"):
        evaluate([best, last], synthetic_csv, "PublicTest", device="cpu", progress=False)
    # the same weights with another normalisation compute something else: an ensemble of two models
    other = save_checkpoint(tmp_path / "other.pt", {**payload, "normalization": {"mean": 0.45, "std": 0.3}})
    assert evaluate([best, other], synthetic_csv, "PublicTest", device="cpu", progress=False).members


@pytest.mark.parametrize("pred", [[7, 1], [-1, 1], [0, 100]])
def test_predictions_outside_the_classes_are_refused(pred):
    """QA: a prediction of 7 was counted into the next row's first cell; -1 raised numpy's ValueError."""
    with pytest.raises(FerEdgeError, match="outside the 7 classes"):
        confusion_matrix([0, 1], pred)
    with pytest.raises(FerEdgeError, match="outside the 7 classes"):
        classification_metrics([0, 1], pred)
    with pytest.raises(FerEdgeError, match="one prediction per label"):
        confusion_matrix([0, 1], [1])
    assert confusion_matrix([0, 1], [6, 1]).sum() == 2  # the last class is still a class


def _ship_commands() -> list[list[str]]:
    """README's ``python -m fer_edge.weights.ship`` commands, as argument lists."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.findall(r"^python -m fer_edge\.weights\.ship [^`]*?(?=\n```)", text, re.M)
    return [shlex.split(c.replace("\\\n", " ")) for c in found]


def test_readme_ship_commands_give_weights_json_metrics():
    """QA: README's ship lines lacked the --metrics-json that gives weights.json's metrics (the CSV's PublicTest
    figures; the shipped file holds the run's own, on the image folders' val). ship writes the checkpoint's metrics
    updated by --metrics-json; the shipped file holds the checkpoint's metrics."""
    commands = _ship_commands()
    assert len(commands) == 2
    table = {e["name"]: e for e in json.loads((ROOT / "fer_edge" / "weights" / "weights.json").read_text())}
    names = set()
    for args in commands:
        opts = {a: args[i + 1] for i, a in enumerate(args) if a.startswith("--") and i + 1 < len(args)}
        name = opts["--name"]
        names.add(name)
        recorded = load_checkpoint(ROOT / "fer_edge" / "weights" / f"{name}.pt").metrics
        shipped = {**recorded, **json.loads(opts.get("--metrics-json", "{}"))}
        assert shipped == table[name]["metrics"], name
        assert json.loads(opts.get("--parity-gate", "{}")) == table[name]["parity_gate"], name
    assert names == set(table)
