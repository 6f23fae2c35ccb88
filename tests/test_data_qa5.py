"""QA pass 5 on data loading: no default selection on a test split, CSV Usage case variants, natural-sort keys of
unusual digits, split folders of unread file types, eval's label-order check before inference, CSVs in a folder,
split aliases both ways."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_edge.constants import LABELS
from fer_edge.data import default_train_split, default_val_split, list_splits, load_split
from fer_edge.data import _folder
from fer_edge.data.synthetic import make_synthetic, write_csv, write_folder
from fer_edge.errors import DataError
from test_data import own_cache  # noqa: F401 - a fixture


@pytest.fixture
def arrays():
    return {"Training": make_synthetic(3, seed=5), "PublicTest": make_synthetic(2, seed=6)}


def _train_test(root: Path, arrays, test: str = "test") -> Path:
    """The Kaggle image layout: train/ and test/ (or another test split's name), no val/."""
    return write_folder(root, {"train": arrays["Training"], test: arrays["PublicTest"]})


def _checkpoint(path: Path, seed: int, labels=LABELS) -> Path:
    from fer_edge.checkpoint import save_checkpoint
    from fer_edge.models import create_model

    torch.manual_seed(seed)
    model = create_model("fer_nano")
    return save_checkpoint(path, {"model": "fer_nano", "model_kwargs": {}, "state_dict": model.state_dict(),
                                  "labels": list(labels), "normalization": {"mean": 0.5, "std": 0.25},
                                  "train_config": {}, "metrics": {}, "data": {}, "epoch": 1})


# --------------------------------------------------------------------------- 1. no selection on a test split


@pytest.mark.parametrize("test", ["test", "PrivateTest", "TEST"])
def test_the_default_validation_split_is_never_a_test_split(tmp_path, own_cache, arrays, test):
    """A folder train/ + test/ (Kaggle's image layout) or Training/ + PrivateTest/ without --val-split selected the
    best epoch on its test split without a word; it is refused, saying what was found and how to name it."""
    root = _train_test(tmp_path / "d", arrays, test)
    with pytest.raises(DataError) as err:
        default_val_split(root, options="fer-edge train --val-split")
    msg = " ".join(str(err.value).split())
    assert f"{root} has no validation split (looked for val, PublicTest, in any case)" in msg, msg
    assert f"Its test split {test!r} is not taken as the validation split by default" in msg, msg
    assert f"(fer-edge train --val-split {test})" in msg and "no longer an unbiased test figure" in msg, msg
    # an explicit name still loads it; eval's default (test_ok) takes it
    assert load_split(root, test).split == test
    assert default_val_split(root, test_ok=True) == test
    assert default_train_split(root) == "train"


def test_a_val_split_still_wins_and_a_csv_never_falls_back(tmp_path, own_cache, arrays):
    root = write_folder(tmp_path / "d", {"train": arrays["Training"], "val": arrays["PublicTest"],
                                          "test": arrays["PublicTest"]})
    assert default_val_split(root) == "val"
    root2 = write_folder(tmp_path / "k", {"Training": arrays["Training"], "PublicTest": arrays["PublicTest"],
                                           "PrivateTest": arrays["PublicTest"]})
    assert default_val_split(root2) == "PublicTest"
    csv = write_csv(tmp_path / "priv.csv", {"Training": arrays["Training"], "PrivateTest": arrays["PublicTest"]})
    for ok in (False, True):
        with pytest.raises(DataError, match=r"priv.csv has no validation split \('PublicTest'\)"):
            default_val_split(csv, test_ok=ok)


def test_train_refuses_to_select_on_the_test_split_unless_named(tmp_path, own_cache, arrays):
    from fer_edge.training import TrainConfig, train

    root = _train_test(tmp_path / "d", arrays)
    cfg = dict(data=str(root), model="simple_cnn", epochs=1, batch_size=16, seed=0, device="cpu",
               max_steps_per_epoch=1)
    with pytest.raises(DataError, match=r"test split 'test' is not taken .*\(fer-edge train --val-split test\)"):
        train(TrainConfig(out=str(tmp_path / "run"), **cfg), progress=False, quiet=True)
    assert not (tmp_path / "run" / "best.pt").exists()
    res = train(TrainConfig(out=str(tmp_path / "run2"), val_split="test", **cfg), progress=False, quiet=True)
    from fer_edge.checkpoint import load_checkpoint

    assert load_checkpoint(res.out_dir / "best.pt").data["val"]["split"] == "test"


def test_soup_refuses_to_select_on_the_test_split_and_eval_evaluates_it(tmp_path, own_cache, arrays):
    from fer_edge.training.evaluation import evaluate
    from fer_edge.training.soup import make_soup

    root = _train_test(tmp_path / "d", arrays)
    cks = [_checkpoint(tmp_path / f"{i}.pt", i) for i in range(2)]
    with pytest.raises(DataError, match=r"test split 'test' is not taken .*\(fer-edge soup --val-split test\)"):
        make_soup(cks, tmp_path / "soup.pt", root, progress=False)
    assert not (tmp_path / "soup.pt").exists()
    r = evaluate(cks[0], root, device="cpu", progress=False)  # eval selects nothing: the test split by default
    assert r.split == "test" and r.n == len(arrays["PublicTest"][1])


# --------------------------------------------------------------------------- 2. CSV Usage case variants


def _csv_rows(arrays_by_usage: list[tuple[str, tuple[np.ndarray, np.ndarray]]]) -> str:
    lines = ["emotion,pixels,Usage"]
    for usage, (images, labels) in arrays_by_usage:
        for im, lab in zip(images, labels):
            lines.append(f"{int(lab)},{' '.join(str(int(v)) for v in im.reshape(-1))},{usage}")
    return "\n".join(lines) + "\n"


def test_csv_usage_values_differing_only_in_case_are_one_split(tmp_path, own_cache, arrays, caplog):
    """A row with Usage ``training`` among ``Training`` rows became a split of its own, silently leaving
    Training."""
    tr, pt = arrays["Training"], arrays["PublicTest"]
    one = (tr[0][:1], tr[1][:1])
    rest = (tr[0][1:], tr[1][1:])
    csv = tmp_path / "mixed.csv"
    csv.write_text(_csv_rows([("Training", rest), ("training", one), ("PUBLICTEST", pt)]))
    with caplog.at_level(logging.WARNING, logger="fer_edge.data"):
        assert list_splits(csv) == ["Training", "PublicTest"]  # a Kaggle name in another case: that split
    s = load_split(csv, "Training")
    assert len(s) == len(tr[1])
    np.testing.assert_array_equal(s.images.numpy(), np.concatenate([rest[0], one[0]]))  # file order kept
    assert default_train_split(csv) == "Training" and default_val_split(csv) == "PublicTest"
    assert len(load_split(csv, "val")) == len(pt[1])
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "Usage values differing only in case are read as one split" in msg, msg
    assert f"'training' (1 row from line {len(rest[1]) + 2})" in msg and "as 'Training'" in msg, msg
    # a name that is no Kaggle usage merges onto the spelling met first (one spelling alone is kept as it is)
    other = tmp_path / "folds.csv"
    other.write_text(_csv_rows([("fold1", rest), ("FOLD1", one), ("training", pt), ("TRAINING", pt)]))
    assert sorted(list_splits(other)) == ["Training", "fold1"]
    assert len(load_split(other, "train")) == 2 * len(pt[1])
    assert len(load_split(other, "fold1")) == len(tr[1])


# --------------------------------------------------------------------------- 3. natural sort of unusual digits


@pytest.mark.parametrize("name", ["²1.png", "a1①2.png", "x²_3.png", "٣.png"])
def test_file_names_with_non_decimal_digits_load(tmp_path, own_cache, arrays, name):
    """``²`` or ``①`` is isdigit() but not int()-able: the sort key raised a bare ValueError in every command."""
    root = write_folder(tmp_path / "d", {"train": arrays["Training"]})
    src = next((root / "train" / "happy").iterdir())
    src.rename(src.with_name(name))
    s = load_split(root, "train")
    assert len(s) == len(arrays["Training"][1])
    assert _folder._natural_key("a²b10") == ("a²b", 10, "")


# --------------------------------------------------------------------------- 4. only unread file types


def test_a_split_of_webp_files_says_so(tmp_path, own_cache, arrays):
    """val/<class>/*.webp said the class folders were misnamed and never mentioned the files."""
    from PIL import Image

    root = write_folder(tmp_path / "d", {"train": arrays["Training"]})
    for i, cls in enumerate(("happy", "sad")):
        (root / "val" / cls).mkdir(parents=True)
        for j in range(2 + i):
            Image.new("L", (48, 48)).save(root / "val" / cls / f"{j}.webp")
    (root / "val" / "sad" / "notes").write_text("x")
    with pytest.raises(DataError) as err:
        default_val_split(root)
    msg = str(err.value)
    assert f"{root / 'val'} holds no image in its class folders (happy, sad): they hold 6 files (5 *.webp, " \
           "1 without extension), not read (images are jpg/jpeg/png/bmp files)" in msg, msg
    assert "class folders are named" not in msg, msg
    with pytest.raises(DataError) as err:
        load_split(root, "val")
    assert "its class folders hold 6 files (5 *.webp, 1 without extension), not read" in str(err.value)


# --------------------------------------------------------------------------- 5. eval: label order first


def test_eval_checks_the_label_order_before_any_inference(tmp_path, own_cache, arrays, monkeypatch):
    import fer_edge.data as data_mod
    import fer_edge.training.trainer as trainer
    from fer_edge.training.evaluation import evaluate

    csv = write_csv(tmp_path / "fer2013.csv", arrays)
    ck = _checkpoint(tmp_path / "perm.pt", 0, labels=sorted(LABELS))
    monkeypatch.setattr(trainer, "predict_logits", lambda *a, **k: pytest.fail("predicted before refusing"))
    monkeypatch.setattr(data_mod, "load_split", lambda *a, **k: pytest.fail("loaded the data before refusing"))
    with pytest.raises(DataError, match="are not FER2013's in FER2013's order"):
        evaluate(ck, csv, device="cpu", progress=False)


# --------------------------------------------------------------------------- 6. CSVs in a folder


@pytest.mark.parametrize("name", ["FER2013.csv", "Fer2013.CSV.gz"])
def test_a_folder_holding_fer2013_csv_in_other_case_is_that_csv(tmp_path, own_cache, arrays, name):
    d = tmp_path / "d"
    d.mkdir()
    write_csv(d / name, arrays)
    assert list_splits(d) == ["Training", "PublicTest"]
    assert default_val_split(d) == "PublicTest" and load_split(d, "val").source == str(d / name)


def test_a_folder_of_other_csv_files_names_them(tmp_path, own_cache, arrays):
    d = tmp_path / "d"
    d.mkdir()
    write_csv(d / "icml_face_data.csv", arrays)
    (d / "README.txt").write_text("x")
    for call in (lambda: default_train_split(d), lambda: default_val_split(d), lambda: load_split(d, "Training")):
        with pytest.raises(DataError) as err:
            call()
        msg = str(err.value)
        assert f"{d} holds no image splits but CSV file (icml_face_data.csv)" in msg, msg
        assert f"pass the file itself: --data {d / 'icml_face_data.csv'}" in msg, msg
    assert len(load_split(d / "icml_face_data.csv", "Training")) == len(arrays["Training"][1])


# --------------------------------------------------------------------------- 7. aliases both ways


def test_folder_aliases_work_both_ways(tmp_path, own_cache, arrays):
    """A folder Training/ PublicTest/ PrivateTest/ refused ``val`` with no hint, though the docstring said both
    forms work."""
    root = write_folder(tmp_path / "k", {"Training": arrays["Training"], "PublicTest": arrays["PublicTest"],
                                          "PrivateTest": arrays["PublicTest"]})
    assert load_split(root, "train").split == "Training"
    assert load_split(root, "val").split == "PublicTest"
    assert load_split(root, "test").split == "PrivateTest"
    half = write_folder(tmp_path / "h", {"Training": arrays["Training"], "PublicTest": arrays["PublicTest"]})
    with pytest.raises(DataError, match=r"'test' not found .*\('test' stands for 'PrivateTest' here\)"):
        load_split(half, "test")
    # the other direction, as before
    plain = write_folder(tmp_path / "p", {"train": arrays["Training"], "val": arrays["PublicTest"]})
    assert load_split(plain, "Training").split == "train" and load_split(plain, "PublicTest").split == "val"
    assert os.path.basename(load_split(plain, "val").source) == "p"
