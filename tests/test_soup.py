"""``fer-edge soup``: weight averaging of fine-tuned checkpoints, on tiny synthetic data."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from fer_edge.checkpoint import load_checkpoint
from fer_edge.cli import app
from fer_edge.errors import CheckpointError, TrainingError
from fer_edge.training import TrainConfig, train
from fer_edge.training.soup import average_state_dicts, make_soup

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
