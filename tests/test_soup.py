"""``fer-edge soup``: weight averaging of fine-tuned checkpoints, on tiny synthetic data."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from fer_edge.checkpoint import load_checkpoint
from fer_edge.cli import app
from fer_edge.errors import CheckpointError, TrainingError
from fer_edge.training import TrainConfig, train
from fer_edge.training.soup import average_state_dicts, check_compatible, make_soup

runner = CliRunner()
KW = {"widths": [8, 16], "stem": 8, "stem_convs": 1}  # a tiny fer_small: it has BatchNorm


def _run(data, out, **kw):
    cfg = dict(data=str(data), model="fer_small", model_kwargs=KW, out=str(out), epochs=1, batch_size=32,
               lr=3e-3, device="cpu", augment="light", max_steps_per_epoch=4, seed=0)
    cfg.update(kw)
    return train(TrainConfig(**cfg), progress=False).out_dir / "best.pt"


@pytest.fixture(scope="module")
def ingredients(synthetic_csv, tmp_path_factory):
    root = tmp_path_factory.mktemp("soup")
    base = _run(synthetic_csv, root / "base", epochs=2)
    return [_run(synthetic_csv, root / f"ft{s}", init=str(base), seed=s) for s in (1, 2)]


def test_average_state_dicts_means_floats_and_keeps_counters():
    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(9)}
    avg = average_state_dicts([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and int(avg["n"]) == 5


def test_soup_averages_weights_and_remeasures_batchnorm(ingredients, synthetic_csv, tmp_path):
    out = tmp_path / "soup.pt"
    r = make_soup(ingredients, out, synthetic_csv, bn="recompute", progress=False)
    ck = load_checkpoint(out)
    a, b = (load_checkpoint(p).state_dict for p in ingredients)
    conv = "stem.0.weight"
    assert torch.allclose(ck.state_dict[conv], (a[conv] + b[conv]) / 2)
    bn = next(k for k in a if k.endswith("running_mean"))
    assert not torch.allclose(ck.state_dict[bn], (a[bn] + b[bn]) / 2)  # measured again, not averaged
    assert ck.raw["soup"]["bn"] == "recompute" and ck.data["bn_statistics"]["recomputed_on"] == "Training"
    avg = make_soup(ingredients, tmp_path / "avg.pt", synthetic_csv, progress=False)  # the default
    assert torch.allclose(load_checkpoint(avg.path).state_dict[bn], (a[bn] + b[bn]) / 2)
    with pytest.raises(TrainingError, match="--bn"):
        make_soup(ingredients, tmp_path / "x.pt", synthetic_csv, bn="median", progress=False)
    assert ck.raw["soup"]["ingredients"] == [str(p) for p in ingredients]
    assert ck.metrics["val_accuracy"] == pytest.approx(r.accuracy) and 0 <= r.accuracy <= 1
    assert ck.build_model() is not None and set(r.ingredient_accuracy) == {str(p) for p in ingredients}
    with pytest.raises(TrainingError, match="exists"):
        make_soup(ingredients, out, synthetic_csv, progress=False)


def test_soup_rejects_incompatible_checkpoints_listing_all(ingredients, synthetic_csv, tmp_path):
    other = _run(synthetic_csv, tmp_path / "other", model_kwargs={**KW, "widths": [8, 24]})
    other_copy = tmp_path / "other_copy.pt"
    other_copy.write_bytes(other.read_bytes())
    with pytest.raises(TrainingError) as e:
        make_soup([ingredients[0], other, other_copy], tmp_path / "s.pt", synthetic_csv, progress=False)
    assert str(e.value).count("model_kwargs") == 2 and not (tmp_path / "s.pt").exists()
    with pytest.raises(TrainingError, match="at least two"):
        make_soup([ingredients[0]], tmp_path / "s.pt", synthetic_csv, progress=False)


def test_checkpoints_record_defaults_and_old_ones_still_soup(ingredients, synthetic_csv, tmp_path):
    ck = load_checkpoint(ingredients[0])
    assert ck.model_kwargs == {**ck.model_kwargs, **KW} and "dropout" in ck.model_kwargs  # defaults recorded
    # a checkpoint from before: only the passed kwargs; the same architecture, so it averages with new ones
    old = load_checkpoint(ingredients[1]).raw
    old_path = tmp_path / "old.pt"
    torch.save({**old, "model_kwargs": dict(KW)}, old_path)
    r = make_soup([ingredients[0], old_path], tmp_path / "mixed.pt", synthetic_csv, progress=False)
    assert 0 <= r.accuracy <= 1
    assert load_checkpoint(r.path).model_kwargs == ck.model_kwargs  # the soup records the resolved form


def test_build_model_names_the_mismatch(ingredients, tmp_path):
    raw = load_checkpoint(ingredients[0]).raw
    bad = tmp_path / "bad.pt"
    torch.save({**raw, "model_kwargs": {**raw["model_kwargs"], "widths": [8, 24]}}, bad)
    with pytest.raises(CheckpointError, match=r"do not fit fer_small.*of another shape") as e:
        load_checkpoint(bad).build_model()
    assert len(str(e.value)) < 600  # one readable line, not load_state_dict's wall of names


def test_greedy_soup_records_each_candidate(ingredients, synthetic_csv, tmp_path):
    out = tmp_path / "greedy.pt"
    try:
        r = make_soup(ingredients, out, synthetic_csv, greedy=True, progress=False)
    except TrainingError as e:  # adding the second lowered accuracy: nothing written, and it says so
        assert "greedy soup kept only" in str(e) and not out.exists()
        return
    assert len(r.tried) == 1 and r.tried[0]["kept"] and r.accuracy >= max(r.ingredient_accuracy.values())
    assert r.accuracy == r.tried[0]["accuracy_with"]  # the written soup is the one the greedy step scored


def test_cli_soup(ingredients, synthetic_csv, tmp_path):
    out = tmp_path / "cli.pt"
    r = runner.invoke(app, ["soup", *map(str, ingredients), "--out", str(out), "--data", str(synthetic_csv),
                            "--bn", "recompute", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "soup of 2" in r.output and out.is_file() and load_checkpoint(out).raw["soup"]["bn"] == "recompute"
    r = runner.invoke(app, ["soup", str(ingredients[0]), str(tmp_path / "missing.pt"), "--out",
                            str(tmp_path / "other.pt"), "--data", str(synthetic_csv)])
    assert r.exit_code == 1 and "missing.pt: no such checkpoint file or shipped model" in " ".join(r.stderr.split())


def test_an_ingredient_given_twice_is_refused_and_shipped_names_are_taken(ingredients, synthetic_csv, tmp_path):
    with pytest.raises(TrainingError, match="is the same file as .*give each ingredient once"):
        make_soup([ingredients[0], ingredients[1], str(ingredients[0])], tmp_path / "s.pt", synthetic_csv)
    r = runner.invoke(app, ["soup", "nano", "small", "--out", str(tmp_path / "s.pt"), "--data", str(synthetic_csv)])
    # the names were found (the shipped files), then refused for what they are: two different models
    assert r.exit_code == 1 and "model 'fer_small' differs from" in " ".join(r.stderr.split()), r.output
    assert not (tmp_path / "s.pt").exists()


@pytest.fixture(scope="module")
def no_bn_pair(synthetic_csv, tmp_path_factory):
    """Two ingredients of ``simple_cnn``, which has no BatchNorm: a run and a copy of it under another name."""
    root = tmp_path_factory.mktemp("soup_no_bn")
    a = _run(synthetic_csv, root / "run", model="simple_cnn", model_kwargs={}, epochs=1, max_steps_per_epoch=2)
    b = root / "copy.pt"
    b.write_bytes(a.read_bytes())
    return [a, b]


def test_split_without_bn_recompute_is_refused(ingredients, synthetic_csv, tmp_path):
    # --split only names the split BatchNorm statistics are recomputed on: alone it would do nothing
    with pytest.raises(TrainingError, match="--split nosuch.*needs --bn recompute"):
        make_soup(ingredients, tmp_path / "s.pt", synthetic_csv, split="nosuch", progress=False)
    r = runner.invoke(app, ["soup", *map(str, ingredients), "--out", str(tmp_path / "s.pt"), "--data",
                            str(synthetic_csv), "--split", "nosuch", "--no-progress"])
    assert r.exit_code == 1 and "needs --bn recompute" in " ".join(r.stderr.split()), r.output
    assert not (tmp_path / "s.pt").exists()
    with pytest.raises(Exception, match="nosuch"):  # with --bn recompute the split is checked
        make_soup(ingredients, tmp_path / "s.pt", synthetic_csv, split="nosuch", bn="recompute", progress=False)


def test_bn_recompute_without_batchnorm_records_and_says_nothing_was_recomputed(no_bn_pair, synthetic_csv, tmp_path):
    r = make_soup(no_bn_pair, tmp_path / "s.pt", synthetic_csv, bn="recompute", progress=False)
    ck = load_checkpoint(r.path)
    assert ck.data["bn_statistics"] == "none: the model has no BatchNorm layers"  # not {'recomputed_on': ...}
    assert r.bn_statistics == ck.data["bn_statistics"]
    assert r.notes and "no BatchNorm" in r.notes[0] and "recomputed nothing" in r.notes[0]
    avg = make_soup(no_bn_pair, tmp_path / "avg.pt", synthetic_csv, progress=False)  # nothing averaged either
    assert load_checkpoint(avg.path).data["bn_statistics"] == "none: the model has no BatchNorm layers"
    assert avg.notes == []
    out = tmp_path / "cli.pt"
    res = runner.invoke(app, ["soup", *map(str, no_bn_pair), "--out", str(out), "--data", str(synthetic_csv),
                              "--bn", "recompute", "--no-progress"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "simple_cnn has no BatchNorm layers: --bn recompute recomputed nothing" in " ".join(res.output.split())


def test_incompatible_soup_lists_every_difference_of_every_ingredient(ingredients, no_bn_pair, tmp_path):
    raw = load_checkpoint(ingredients[1]).raw
    wide = tmp_path / "wide.pt"  # the same model as the first ingredient, other kwargs
    torch.save({**raw, "model_kwargs": {**raw["model_kwargs"], "widths": [8, 24]}}, wide)
    relabelled = tmp_path / "relabelled.pt"  # other labels and normalisation
    torch.save({**raw, "labels": list("abcdefg"), "normalization": {"mean": 0.1, "std": 0.2}}, relabelled)
    with pytest.raises(TrainingError) as e:
        check_compatible([load_checkpoint(p) for p in (ingredients[0], no_bn_pair[0], wide, relabelled)])
    msg = str(e.value)
    assert f"{no_bn_pair[0]}: model 'simple_cnn' differs" in msg
    assert f"{wide}: model_kwargs" in msg  # reported although another ingredient is of another model
    assert f"{relabelled}: labels" in msg and f"{relabelled}: normalization" in msg
    assert msg.count("\n  ") == 4


def test_an_empty_ingredient_name_says_so(ingredients, synthetic_csv, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint name is empty"):  # not "." taken as a path
        make_soup(["", ingredients[0]], tmp_path / "s.pt", synthetic_csv, progress=False)


def _norm(text: str) -> str:
    return " ".join(text.split())  # Rich may wrap long lines


def _broken(src, dst, how: str):
    """A copy of ``src`` with NaN weights (``how="nan"``) or a negative BatchNorm running_var (``"negvar"``)."""
    from fer_edge.checkpoint import save_checkpoint

    payload = torch.load(src, map_location="cpu", weights_only=True)
    sd = payload["state_dict"]
    if how == "nan":
        sd["stem.0.weight"] = torch.full_like(sd["stem.0.weight"], float("nan"))
    else:
        k = next(k for k in sd if k.endswith("running_var"))
        sd[k] = -sd[k].abs() - 1.0
    for k in ("format", "fer_edge_version"):
        payload.pop(k, None)
    return save_checkpoint(dst, payload)


@pytest.mark.parametrize("name", ["noext", "soup.onnx", "soup.PT", ".pt"])
def test_out_must_end_in_pt_or_pth_and_is_checked_before_any_work(synthetic_csv, tmp_path, name):
    out = tmp_path / "soup" / name
    # the ingredients do not exist: the --out check comes first
    with pytest.raises(TrainingError, match=r"must end in \.pt or \.pth"):
        make_soup([tmp_path / "missing_a.pt", tmp_path / "missing_b.pt"], out, synthetic_csv, progress=False)
    assert not out.exists() and not (tmp_path / "soup").exists()


def test_cli_out_without_a_checkpoint_suffix_is_refused_cleanly(ingredients, synthetic_csv, tmp_path):
    for name in ("noext", "x.onnx"):
        out = tmp_path / "soup" / name
        r = runner.invoke(app, ["soup", *map(str, ingredients), "--out", str(out), "--data", str(synthetic_csv),
                                "--no-progress"])
        assert r.exit_code == 1, r.output
        assert "must end in .pt or .pth" in _norm(r.stderr) and "Traceback" not in r.output
        assert not out.exists()
    r = runner.invoke(app, ["soup", *map(str, ingredients), "--out", "", "--data", str(synthetic_csv)])
    assert r.exit_code == 2 and "is empty" in _norm(r.output)


def test_out_pth_is_taken(no_bn_pair, synthetic_csv, tmp_path):
    r = make_soup(no_bn_pair, tmp_path / "soup.pth", synthetic_csv, progress=False)
    assert r.path.is_file() and load_checkpoint(r.path).raw["soup"]["ingredients"] == [str(p) for p in no_bn_pair]


def test_out_naming_a_folder_says_it_is_a_folder(synthetic_csv, tmp_path):
    for folder in (tmp_path, tmp_path / "looks_like.pt"):
        folder.mkdir(exist_ok=True)
        with pytest.raises(TrainingError, match="is a folder, not a file: give the soup checkpoint's file path") as e:
            make_soup([tmp_path / "a.pt", tmp_path / "b.pt"], folder, synthetic_csv, progress=False)
        assert "never overwrites" not in str(e.value)
    with pytest.raises(TrainingError, match="is a folder"):
        make_soup([tmp_path / "a.pt", tmp_path / "b.pt"], "", synthetic_csv, progress=False)


def test_an_empty_split_is_refused_not_taken_for_the_default(ingredients, synthetic_csv, tmp_path):
    out = tmp_path / "s.pt"
    with pytest.raises(TrainingError, match="--split is empty"):
        make_soup(ingredients, out, synthetic_csv, split="", bn="recompute", progress=False)
    with pytest.raises(TrainingError, match="--split is empty"):  # not "needs --bn recompute"
        make_soup(ingredients, out, synthetic_csv, split="  ", progress=False)
    with pytest.raises(TrainingError, match="--val-split is empty"):
        make_soup(ingredients, out, synthetic_csv, val_split="", progress=False)
    assert not out.exists()
    r = runner.invoke(app, ["soup", *map(str, ingredients), "--out", str(out), "--data", str(synthetic_csv),
                            "--val-split", "", "--no-progress"])
    assert r.exit_code == 1 and "--val-split is empty" in _norm(r.stderr) and not out.exists()
    # not given: the default (PublicTest for the CSV)
    assert make_soup(ingredients, out, synthetic_csv, progress=False).val_split == "PublicTest"


@pytest.mark.parametrize("how", ["nan", "negvar"])
def test_an_ingredient_with_non_finite_outputs_is_an_error_naming_it(ingredients, synthetic_csv, tmp_path, how):
    bad = _broken(ingredients[1], tmp_path / f"bad_{how}.pt", how)
    for greedy in (False, True):
        out = tmp_path / f"s_{greedy}.pt"
        with pytest.raises(TrainingError) as e:
            make_soup([ingredients[0], bad], out, synthetic_csv, greedy=greedy, progress=False)
        msg = str(e.value)
        assert f"{bad}: its outputs on PublicTest are not finite" in msg and "no soup written" in msg
        assert str(ingredients[0]) + ":" not in msg  # only the broken one is named
        assert ("non-finite weights in stem.0.weight" if how == "nan" else "negative BatchNorm running_var") in msg
        assert not out.exists()
    r = runner.invoke(app, ["soup", str(ingredients[0]), str(bad), "--out", str(tmp_path / "cli.pt"), "--data",
                            str(synthetic_csv), "--no-progress"])
    assert r.exit_code == 1 and "not finite" in _norm(r.stderr) and not (tmp_path / "cli.pt").exists()


def _poison_average(monkeypatch, when):
    """Make the soup's averaged weights NaN when ``when(states)``: ingredients fine, the soup not."""
    import fer_edge.training.soup as soup_mod

    real = soup_mod.average_state_dicts

    def fake(states):
        avg = real(states)
        if when(states):
            avg["stem.0.weight"] = torch.full_like(avg["stem.0.weight"], float("nan"))
        return avg

    monkeypatch.setattr(soup_mod, "average_state_dicts", fake)


def test_a_soup_with_non_finite_outputs_is_never_written(ingredients, synthetic_csv, tmp_path, monkeypatch):
    _poison_average(monkeypatch, lambda states: True)
    out = tmp_path / "s.pt"
    with pytest.raises(TrainingError, match="is not usable: its outputs on PublicTest are not finite.*no soup written"):
        make_soup(ingredients, out, synthetic_csv, progress=False)
    assert not out.exists()
    # greedy: the only candidate is left out, so only one ingredient is kept: nothing written either
    with pytest.raises(TrainingError, match=r"kept only .*or gave non-finite outputs \(non-finite\)"):
        make_soup(ingredients, out, synthetic_csv, greedy=True, progress=False)
    assert not out.exists()


def test_a_file_made_at_out_while_the_soup_cooks_is_never_replaced(ingredients, synthetic_csv, tmp_path,
                                                                   monkeypatch):
    import fer_edge.training.soup as soup_mod

    out = tmp_path / "s.pt"
    real = soup_mod.average_state_dicts

    def meanwhile(states):  # --out was checked before the work; something else writes it during the work
        out.write_text("someone else's")
        return real(states)

    monkeypatch.setattr(soup_mod, "average_state_dicts", meanwhile)
    with pytest.raises(TrainingError, match=r"s\.pt appeared while the soup was made; it was left as it is and no "
                                            r"soup was written: choose another --out"):
        make_soup(ingredients, out, synthetic_csv, progress=False)
    assert out.read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.pt"]


def test_greedy_leaves_out_a_candidate_whose_soup_is_not_finite(ingredients, synthetic_csv, tmp_path, monkeypatch):
    # three copies of one ingredient: equal accuracy (kept in the order given), a soup of copies is the same model
    copies = []
    for name in ("a.pt", "b.pt", "c.pt"):
        (tmp_path / name).write_bytes(ingredients[0].read_bytes())
        copies.append(tmp_path / name)
    _poison_average(monkeypatch, lambda states: len(states) == 3)  # adding the third breaks the soup
    r = make_soup(copies, tmp_path / "s.pt", synthetic_csv, greedy=True, progress=False)
    assert r.ingredients == [str(copies[0]), str(copies[1])]
    assert r.tried[0]["kept"] and r.tried[1] == {"checkpoint": str(copies[2]), "accuracy_with": None, "kept": False,
                                                 "finite": False}
    assert any(f"left {copies[2]} out" in n and "not finite" in n for n in r.notes)
    ck = load_checkpoint(r.path)
    assert torch.isfinite(ck.state_dict["stem.0.weight"]).all() and ck.raw["soup"]["tried"] == r.tried


def test_cli_summary_wording(no_bn_pair, synthetic_csv, tmp_path):
    r = runner.invoke(app, ["soup", *map(str, no_bn_pair), "--out", str(tmp_path / "s.pt"), "--data",
                            str(synthetic_csv), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "soup of 2 checkpoints: PublicTest accuracy" in _norm(r.output)


def test_recompute_scores_each_ingredient_with_its_statistics_measured_again(ingredients, synthetic_csv, tmp_path):
    """Greedy under --bn recompute compared candidate soups (statistics re-measured) with ingredients scored on
    their own stored statistics: the first candidate had to beat a differently measured figure."""
    from torch.optim.swa_utils import update_bn

    from fer_edge.data import load_split
    from fer_edge.training.soup import _bn_batches
    from fer_edge.training.trainer import predict_logits

    r = make_soup(ingredients, tmp_path / "s.pt", synthetic_csv, bn="recompute", progress=False)
    train, val = (load_split(synthetic_csv, s, progress=False) for s in ("Training", "PublicTest"))
    for path in ingredients:
        ck = load_checkpoint(path)
        model = ck.build_model()
        update_bn(_bn_batches(train.images, ck.normalization), model)
        logits = predict_logits(model.eval(), val.images, ck.normalization, torch.device("cpu"))
        want = float((logits.argmax(1) == val.labels).float().mean())
        assert r.ingredient_accuracy[str(ck.path)] == pytest.approx(want)
