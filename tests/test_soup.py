"""``fer-edge soup``: weight averaging of fine-tuned checkpoints, on tiny synthetic data."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from fer_edge.checkpoint import load_checkpoint
from fer_edge.cli import app
from fer_edge.errors import CheckpointError, DataError, TrainingError
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
    assert f"{other_copy}: its weights are identical to {other}'s" in str(e.value)  # listed with the rest
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


def test_an_interrupted_soup_says_what_it_wrote(ingredients, synthetic_csv, tmp_path, monkeypatch):
    """QA: Ctrl-C or SIGTERM during a soup ended it with no word (SIGTERM killed it: 143), and one arriving
    after the soup was written gave exit 130 with nothing saying the file was complete."""
    import signal

    import fer_edge.training.soup as soup_mod

    real = soup_mod.make_soup
    args = ["soup", *map(str, ingredients), "--data", str(synthetic_csv), "--no-progress"]

    def stopped_before(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(soup_mod, "make_soup", stopped_before)
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "a.pt")])
    assert r.exit_code == 130 and "interrupted: nothing was written" in " ".join(r.stderr.split()), r.output
    assert not (tmp_path / "a.pt").exists()

    def another_process_writes_out(*a, **k):  # a file at --out that the soup did not write
        (tmp_path / "c.pt").write_bytes(b"someone else's")
        raise KeyboardInterrupt

    monkeypatch.setattr(soup_mod, "make_soup", another_process_writes_out)
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "c.pt")])
    assert r.exit_code == 130 and "interrupted: nothing was written" in " ".join(r.stderr.split()), r.output

    def terminated_after(*a, **k):  # SIGTERM once the soup is written: KeyboardInterrupt, not death by signal
        res = real(*a, **k)
        signal.raise_signal(signal.SIGTERM)
        return res

    monkeypatch.setattr(soup_mod, "make_soup", terminated_after)
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "b.pt")])
    err = " ".join(r.stderr.split())
    assert r.exit_code == 130 and f"interrupted: {tmp_path / 'b.pt'} was written before it (whole" in err, r.output
    assert load_checkpoint(tmp_path / "b.pt").raw["soup"]


def test_an_ingredient_given_twice_is_refused_and_shipped_names_are_taken(ingredients, synthetic_csv, tmp_path):
    with pytest.raises(TrainingError, match="is the same file as .*give each ingredient once"):
        make_soup([ingredients[0], ingredients[1], str(ingredients[0])], tmp_path / "s.pt", synthetic_csv)
    r = runner.invoke(app, ["soup", "nano", "small", "--out", str(tmp_path / "s.pt"), "--data", str(synthetic_csv)])
    # the names were found (the shipped files), then refused for what they are: two different models
    assert r.exit_code == 1 and "model 'fer_small' differs from" in " ".join(r.stderr.split()), r.output
    assert not (tmp_path / "s.pt").exists()


@pytest.fixture(scope="module")
def no_bn_pair(synthetic_csv, tmp_path_factory):
    """Two ingredients of ``simple_cnn``, which has no BatchNorm: two short runs of other seeds."""
    root = tmp_path_factory.mktemp("soup_no_bn")
    return [_run(synthetic_csv, root / f"run{s}", model="simple_cnn", model_kwargs={}, epochs=1,
                 max_steps_per_epoch=2, seed=s) for s in (0, 1)]


def test_split_without_bn_recompute_is_refused(ingredients, synthetic_csv, tmp_path):
    # --split only names the split BatchNorm statistics are recomputed on: alone it would do nothing
    with pytest.raises(TrainingError, match="--split nosuch.*needs --bn recompute"):
        make_soup(ingredients, tmp_path / "s.pt", synthetic_csv, split="nosuch", progress=False)
    r = runner.invoke(app, ["soup", *map(str, ingredients), "--out", str(tmp_path / "s.pt"), "--data",
                            str(synthetic_csv), "--split", "nosuch", "--no-progress"])
    assert r.exit_code == 2 and "needs --bn recompute" in " ".join(r.stderr.split()), r.output  # a usage error
    assert not (tmp_path / "s.pt").exists()
    with pytest.raises(DataError, match="split 'nosuch' not found"):  # with --bn recompute the split is checked
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
    res = runner.invoke(app, ["soup", *map(str, no_bn_pair), "--out", str(tmp_path / "narrow.pt"), "--data",
                              str(synthetic_csv), "--bn", "recompute", "--no-progress"], env={"COLUMNS": "40"})
    note = [line for line in res.output.splitlines() if line.startswith("note: ")]
    assert len(note) == 1 and note[0] == f"note: {r.notes[0]}", res.output  # one line, for grep, however narrow


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
    assert f"{relabelled}: its weights are identical to {wide}'s" in msg  # both copy ingredients[1]'s weights
    assert msg.count("\n  ") == 5


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
        assert r.exit_code == 2, r.output  # a value wrong on its own: a usage error
        assert "must end in .pt or .pth" in _norm(r.stderr) and "Traceback" not in r.output
        assert not out.exists()
    r = runner.invoke(app, ["soup", *map(str, ingredients), "--out", "", "--data", str(synthetic_csv)])
    assert r.exit_code == 2 and "is empty" in _norm(r.output)
    r = runner.invoke(app, ["soup", str(ingredients[0]), "--out", str(tmp_path / "one.pt"), "--data",
                            str(synthetic_csv)])
    assert r.exit_code == 2 and "a soup needs at least two checkpoints" in _norm(r.stderr), r.output


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
    assert r.exit_code == 2 and "--val-split" in _norm(r.stderr) and "is empty" in _norm(r.stderr) and not out.exists()
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


def _nudged(src, dst, ulps: int):
    """A copy of ``src`` with one weight moved by ``ulps`` floats: not identical, and (practically) the same model."""
    from fer_edge.checkpoint import save_checkpoint

    payload = torch.load(src, map_location="cpu", weights_only=True)
    w = payload["state_dict"]["stem.0.weight"].view(-1)
    for _ in range(ulps):
        w[0] = torch.nextafter(w[0], torch.tensor(float("inf")))
    for k in ("format", "fer_edge_version"):
        payload.pop(k, None)
    return save_checkpoint(dst, payload)


def test_greedy_leaves_out_a_candidate_whose_soup_is_not_finite(ingredients, synthetic_csv, tmp_path, monkeypatch):
    # three near-copies of one ingredient (identical ones are refused): equal accuracy (kept in the order given), a
    # soup of them is the same model
    copies = [_nudged(ingredients[0], tmp_path / name, ulps) for name, ulps in (("a.pt", 0), ("b.pt", 1),
                                                                                   ("c.pt", 2))]
    _poison_average(monkeypatch, lambda states: len(states) == 3)  # adding the third breaks the soup
    r = make_soup(copies, tmp_path / "s.pt", synthetic_csv, greedy=True, progress=False)
    assert r.ingredients == [str(copies[0]), str(copies[1])]
    assert r.tried[0]["kept"] and r.tried[1] == {"checkpoint": str(copies[2]), "accuracy_with": None, "kept": False,
                                                 "finite": False}
    assert any(f"left {copies[2]} out" in n and "not finite" in n for n in r.notes)
    ck = load_checkpoint(r.path)
    assert torch.isfinite(ck.state_dict["stem.0.weight"]).all() and ck.raw["soup"]["tried"] == r.tried


def test_a_greedy_soup_records_the_training_data_of_the_ingredients_it_kept(ingredients, synthetic_csv, tmp_path,
                                                                            monkeypatch):
    """QA: a candidate greedy left out, trained on other data, made the soup record no training data."""
    from fer_edge.checkpoint import save_checkpoint

    copies = [_nudged(ingredients[0], tmp_path / name, ulps) for name, ulps in (("a.pt", 0), ("b.pt", 1))]
    payload = torch.load(_nudged(ingredients[0], tmp_path / "c0.pt", 2), map_location="cpu", weights_only=True)
    payload["data"]["train"] = {**payload["data"]["train"], "sha256": "0" * 64}  # trained on other images
    for k in ("format", "fer_edge_version"):
        payload.pop(k, None)
    other = save_checkpoint(tmp_path / "c.pt", payload)
    _poison_average(monkeypatch, lambda states: len(states) == 3)  # adding the third breaks the soup: left out
    r = make_soup([*copies, other], tmp_path / "s.pt", synthetic_csv, greedy=True, progress=False)
    assert r.ingredients == [str(copies[0]), str(copies[1])]
    ck = load_checkpoint(r.path)
    assert ck.data["train"] == load_checkpoint(copies[0]).data["train"], ck.data
    assert not any("records no training data" in n for n in r.notes), r.notes


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


def test_identical_weights_are_refused_naming_every_pair(ingredients, synthetic_csv, tmp_path):
    """A run whose best epoch is its last writes the same weights to best.pt and last.pt: a "soup" of the two
    would only weight one model twice (as ``fer-edge eval`` refuses a byte-identical ensemble member)."""
    last = ingredients[0].parent / "last.pt"  # one-epoch runs: best.pt's weights
    assert torch.equal(load_checkpoint(last).state_dict["stem.0.weight"],
                       load_checkpoint(ingredients[0]).state_dict["stem.0.weight"])
    copy = tmp_path / "copy.pt"
    copy.write_bytes(ingredients[1].read_bytes())
    out = tmp_path / "s.pt"
    with pytest.raises(TrainingError) as e:
        make_soup([ingredients[0], last, ingredients[1], copy], out, synthetic_csv, progress=False)
    msg = _norm(str(e.value))
    assert f"{last}: its weights are identical to {ingredients[0]}'s" in msg
    assert f"{copy}: its weights are identical to {ingredients[1]}'s" in msg and not out.exists()
    r = runner.invoke(app, ["soup", str(ingredients[0]), str(last), "--out", str(out), "--data", str(synthetic_csv),
                            "--no-progress"])
    assert r.exit_code == 1 and "its weights are identical to" in _norm(r.stderr) and "Traceback" not in r.output
    assert not out.exists()


def test_soup_keeps_the_data_record_and_export_finds_its_validation_data(ingredients, synthetic_csv, tmp_path,
                                                                          monkeypatch):
    from fer_edge.exporters import calibration, export

    monkeypatch.setattr(calibration, "MIN_VAL_SIZE", 64)  # the synthetic PublicTest has 84 images
    r = make_soup(ingredients, tmp_path / "soup.pt", synthetic_csv, progress=False)
    ck = load_checkpoint(r.path)
    ing = load_checkpoint(ingredients[0])
    assert ck.data["train"] == ing.data["train"] and ck.data["train"]["sha256"]  # the ingredients' (they agree)
    assert ck.data["val"]["sha256"] and ck.data["val"]["split"] == "PublicTest"  # what it was scored on
    assert ck.data["val"]["source"] == ing.data["val"]["source"] and ck.data["bn_statistics"] == "averaged"
    assert ck.raw["input_files"] == ing.raw["input_files"] and ck.raw["input_files"]["init"]
    res = export(r.path, targets=["onnx"], precisions=["fp32"], out_dir=tmp_path / "exp", data_progress=False)
    assert res.manifest["validation_data"] is not None
    assert all("no validation data" not in str(a.validation.get("reason", "")) for a in res.artifacts)
    assert all(a.status == "passed" for a in res.artifacts), [a.validation for a in res.artifacts]
    # the held-out check compares the recorded training data's SHA-256
    res = export(r.path, targets=["onnx"], precisions=["fp32"], out_dir=tmp_path / "exp2", data_progress=False,
                 val_data=synthetic_csv, val_split="Training", raise_on_failure=False)
    assert any("the images this checkpoint was trained on" in w for w in res.warnings), res.warnings


def test_recompute_records_the_split_it_measured_on_and_paths_are_absolute(ingredients, synthetic_csv, tmp_path,
                                                                           monkeypatch):
    import os

    from fer_edge.data import load_split

    monkeypatch.chdir(tmp_path)
    typed = [os.path.relpath(p, tmp_path) for p in ingredients]
    r = make_soup(typed, "soup.pt", synthetic_csv, bn="recompute", progress=False)
    ck = load_checkpoint(tmp_path / "soup.pt")
    train = load_split(synthetic_csv, "Training", progress=False)
    assert ck.data["train"]["sha256"] == train.fingerprint["sha256"] and ck.data["train"]["split"] == "Training"
    assert ck.data["val"]["sha256"] and ck.data["bn_statistics"]["recomputed_on"] == "Training"
    resolved = [str(p.resolve()) for p in ingredients]
    assert ck.raw["soup"]["ingredients"] == resolved and list(ck.raw["soup"]["ingredient_val_accuracy"]) == resolved
    assert r.ingredients == typed and list(r.ingredient_accuracy) == typed  # what the user typed, for the output


def test_ingredients_without_an_agreed_training_record_say_so(ingredients, synthetic_csv, tmp_path):
    raw = load_checkpoint(ingredients[1]).raw
    bare = tmp_path / "bare.pt"
    torch.save({**raw, "data": {}}, bare)  # an older checkpoint: no data record
    r = make_soup([ingredients[0], bare], tmp_path / "s.pt", synthetic_csv, progress=False)
    ck = load_checkpoint(r.path)
    assert "train" not in ck.data and ck.data["val"]["sha256"]
    assert any(f"{bare} records no train data fingerprint" in n and "cannot tell" in n for n in r.notes), r.notes
    other = tmp_path / "other.pt"
    other_data = {**raw["data"]["train"], "sha256": "0" * 64, "unordered_sha256": "1" * 64}  # other images
    torch.save({**raw, "data": {**raw["data"], "train": other_data}}, other)
    r = make_soup([ingredients[0], other], tmp_path / "s2.pt", synthetic_csv, progress=False)
    assert "train" not in load_checkpoint(r.path).data
    assert any("trained on different data" in n and str(other) in n for n in r.notes), r.notes


def test_progress_shows_each_evaluation_on_a_terminal_only(ingredients, synthetic_csv, tmp_path, monkeypatch):
    import io

    from rich.console import Console

    import fer_edge.training.soup as soup_mod

    shown = io.StringIO()
    terminal = Console(file=shown, force_terminal=True, width=200)
    monkeypatch.setattr(soup_mod, "_progress_console", lambda: terminal)
    make_soup(ingredients, tmp_path / "s.pt", synthetic_csv, greedy=False, progress=True)
    text = shown.getvalue()
    for k, label in ((1, f"ingredient {ingredients[0]}"), (2, f"ingredient {ingredients[1]}"), (3, "soup of 2")):
        assert f"evaluation {k}/3: {label}" in text, text
    shown = io.StringIO()
    terminal = Console(file=shown, force_terminal=True, width=200)
    make_soup(ingredients, tmp_path / "s2.pt", synthetic_csv, progress=False)  # --no-progress: nothing
    assert shown.getvalue() == ""
    monkeypatch.setattr(soup_mod, "_progress_console", lambda: Console(file=shown, force_terminal=False))
    make_soup(ingredients, tmp_path / "s3.pt", synthetic_csv, progress=True)  # not a terminal: nothing
    assert shown.getvalue() == ""


def test_scoring_on_the_training_split_is_noted(ingredients, synthetic_csv, tmp_path):
    """QA: ``--val-split Training`` scored (and greedy chose) on the ingredients' training images without a word,
    where train warns of the same."""
    r = make_soup(ingredients, tmp_path / "s.pt", synthetic_csv, val_split="Training", progress=False)
    assert any(n.startswith("the validation split Training is training data (") and str(ingredients[0]) in n
               and "says little about new faces" in n for n in r.notes), r.notes
    r = make_soup(ingredients, tmp_path / "s2.pt", synthetic_csv, progress=False)  # PublicTest: nothing to say
    assert not any("is training data" in n for n in r.notes), r.notes
