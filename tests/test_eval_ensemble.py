"""``fer-edge eval`` with several checkpoints: the ensemble of their softmax probabilities."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fer_edge.checkpoint import load_checkpoint, save_checkpoint
from fer_edge.cli import app
from fer_edge.data import load_split
from fer_edge.errors import CheckpointError
from fer_edge.metrics import classification_metrics
from fer_edge.training import evaluate
from fer_edge.training.trainer import predict_logits
from fer_edge.utils import sha256_path

runner = CliRunner()


def _variant(src, dst, *, noise: float, seed: int, mean: float, std: float, labels=None):
    """A copy of ``src`` with perturbed weights and its own normalisation (and, optionally, labels)."""
    payload = torch.load(src, map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(seed)
    payload["state_dict"] = {k: v + noise * v.std() * torch.randn(v.shape, generator=g)
                             if v.is_floating_point() and v.numel() > 1 else v
                             for k, v in payload["state_dict"].items()}
    payload["normalization"] = {"mean": mean, "std": std}
    if labels is not None:
        payload["labels"] = labels
    for k in ("format", "fer_edge_version"):
        payload.pop(k, None)
    return save_checkpoint(dst, payload)


@pytest.fixture(scope="module")
def members(tiny_checkpoint, tmp_path_factory):
    d = tmp_path_factory.mktemp("ensemble")
    # the synthetic test set is easy for the trained model; mismatched normalisations make the members err
    # differently, so the ensemble's answers differ from each member's (checked in the test)
    return [_variant(tiny_checkpoint, d / "b.pt", noise=0.1, seed=1, mean=0.45, std=0.3),
            _variant(tiny_checkpoint, d / "c.pt", noise=0.1, seed=2, mean=0.55, std=0.2)]


def _probs(path, images, tta):
    ck = load_checkpoint(path)
    return torch.softmax(predict_logits(ck.build_model(), images, ck.normalization, torch.device("cpu"), tta=tta), 1)


@pytest.mark.parametrize("tta", [False, True])
def test_ensemble_is_the_mean_of_member_probabilities(members, synthetic_csv, tta):
    ds = load_split(synthetic_csv, "PublicTest", progress=False)
    probs = [_probs(p, ds.images, tta) for p in members]
    mean_pred = (sum(probs) / len(probs)).argmax(1)
    # the ensemble's answers are neither member's, nor those of the geometric mean of the probabilities, so a wrong
    # combination shows in the confusion matrix
    assert all(not torch.equal(mean_pred, p.argmax(1)) for p in probs)
    assert not torch.equal(mean_pred, sum(p.log() for p in probs).argmax(1))
    want = classification_metrics(ds.labels.numpy(), mean_pred.numpy(), load_checkpoint(members[0]).labels)
    r = evaluate(members, synthetic_csv, "PublicTest", tta=tta, device="cpu", progress=False)
    assert r.confusion == want["confusion"] and r.accuracy == pytest.approx(want["accuracy"])
    assert r.members == [str(p) for p in members] and r.model.startswith("ensemble of fer_nano")
    single = evaluate(members[0], synthetic_csv, "PublicTest", tta=tta, device="cpu", progress=False)
    assert single.members is None and single.model == "fer_nano"


def test_ensemble_refuses_members_with_other_labels(members, tmp_path):
    other = _variant(members[0], tmp_path / "other.pt", noise=0.0, seed=0, mean=0.5, std=0.25,
                     labels=["a", "b", "c", "d", "e", "f", "g"])
    with pytest.raises(CheckpointError, match="labels differ"):
        evaluate([members[0], other], "unused.csv", "PublicTest", device="cpu", progress=False)


def test_a_model_with_fer2013_classes_in_another_order_is_not_scored(members, synthetic_csv, tmp_path):
    """QA: a checkpoint whose labels (and output rows) were in alphabetical order was scored as if in FER2013's
    order: the data's class i against the model's output i, a wrong accuracy (0.46 for a 0.70 model), with the
    confusion matrix's rows named wrongly. It is refused, as --init refuses other labels."""
    from fer_edge.constants import LABELS
    from fer_edge.errors import DataError

    order = sorted(range(len(LABELS)), key=lambda i: LABELS[i])
    assert order != list(range(len(LABELS)))
    for labels in ([LABELS[i] for i in order], ["anger", *LABELS[1:]]):
        other = _variant(members[0], tmp_path / "perm.pt", noise=0.0, seed=0, mean=0.5, std=0.25, labels=labels)
        with pytest.raises(DataError, match="are not FER2013's in FER2013's order"):
            evaluate(other, synthetic_csv, "PublicTest", device="cpu", progress=False)
    r = CliRunner().invoke(app, ["eval", "--model", str(other), "--data", str(synthetic_csv), "--split", "PublicTest"])
    assert r.exit_code == 1 and "not FER2013's in FER2013's order" in " ".join(r.output.split()), r.output
    assert classification_metrics([0, 1], [0, 1], LABELS)["accuracy"] == 1.0  # FER2013's own order: scored


def test_cli_eval_repeated_model_evaluates_the_ensemble(members, synthetic_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--data", str(synthetic_csv), "--split", "PublicTest"]
    for p in members:
        args += ["--model", str(p)]
    r = runner.invoke(app, args + ["--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    want = evaluate(members, synthetic_csv, "PublicTest", device="cpu", progress=False)
    assert res["members"] == [str(p) for p in members] and res["accuracy"] == pytest.approx(want.accuracy)
    # the ensemble's confusion matrix goes to ./fer-edge-eval, not into the first member's run folder
    assert len(list((tmp_path / "fer-edge-eval").glob("confusion_ensemble2-*_fer2013-*_PublicTest.png"))) == 1
    assert not list(members[0].parent.glob("confusion_*.png"))
    r = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert "ensemble of fer_nano, fer_nano" in r.output
    assert np.isfinite(res["macro_f1"])


@pytest.mark.real_plots
def test_confusion_png_names_the_data_file_and_tta(members, synthetic_csv, tmp_path):
    # the same checkpoint on another data file, or with flip TTA, must not overwrite the earlier plot
    other = tmp_path / "other_data.csv.gz"
    other.write_bytes(synthetic_csv.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    runs = [(synthetic_csv, False), (synthetic_csv, True), (other, False), (other, True)]
    pngs = [evaluate(members[0], d, "PublicTest", tta=t, device="cpu", out_dir=out, progress=False).confusion_png
            for d, t in runs]
    names = [p.rsplit("/", 1)[-1] for p in pngs]
    sha = load_split(synthetic_csv, "PublicTest").fingerprint["sha256"][:8]
    who = f"{members[0].stem}-{sha256_path(members[0])[:8]}"
    assert names == [f"confusion_{who}_fer2013-{sha}_PublicTest.png", f"confusion_{who}_fer2013-{sha}_PublicTest_tta.png",
                     f"confusion_{who}_other_data-{sha}_PublicTest.png",
                     f"confusion_{who}_other_data-{sha}_PublicTest_tta.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    from PIL import Image

    assert all(min(Image.open(p).size) > 300 for p in pngs)  # drawn by matplotlib (real_plots)
    r = runner.invoke(app, ["eval", "--model", str(members[0]), "--data", str(other), "--split", "PublicTest",
                            "--tta", "--out", str(out)], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert f"confusion matrix: {out / names[3]}" in r.output  # the path written
    # part of a split has its own plot
    part = evaluate(members[0], other, "PublicTest", device="cpu", out_dir=out, limit=10, progress=False)
    assert part.confusion_png.endswith(f"confusion_{who}_other_data-{sha}_PublicTest_first10.png")


def test_confusion_png_names_tell_apart_data_whose_names_read_the_same(members, synthetic_arrays, tmp_path):
    """``my data`` and ``my_data``, or two folders both named ``images``, wrote one plot over the other."""
    from fer_edge.data.synthetic import write_folder

    out = tmp_path / "out"
    out.mkdir()
    roots = [tmp_path / "a" / "images", tmp_path / "b" / "images", tmp_path / "my data", tmp_path / "my_data"]
    for i, root in enumerate(roots):
        x, y = synthetic_arrays["PublicTest"]
        write_folder(root, {"train": (x[:7], y[:7]), "val": (x[: 70 - 7 * i], y[: 70 - 7 * i])})
    pngs = [evaluate(members[0], r, "val", device="cpu", out_dir=out, progress=False).confusion_png for r in roots]
    assert len(set(pngs)) == 4 and len(list(out.glob("*.png"))) == 4, pngs


def test_cli_eval_empty_model_name_says_so(synthetic_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["eval", "--model", "", "--data", str(synthetic_csv)], env={"COLUMNS": "250"})
    err = " ".join(r.stderr.split())
    assert r.exit_code == 2 and "is empty: give a checkpoint path" in err and "not found" not in err, r.output
    with pytest.raises(CheckpointError, match="checkpoint name is empty"):
        evaluate("", synthetic_csv, "PublicTest", device="cpu", progress=False)


def test_confusion_png_names_keep_letters_of_any_script():
    from fer_edge.training.evaluation import confusion_png_name

    assert confusion_png_name("ünï", "val", False) != confusion_png_name("änö", "val", False)
    assert confusion_png_name("données/", "val", True) == "confusion_données_val_tta.png"


def test_confusion_png_names_the_model_so_other_models_keep_their_plots(members, synthetic_csv, tmp_path):
    """Every shipped model and every ensemble wrote ./fer-edge-eval/confusion_<data>_<split>.png, as did best.pt and
    last.pt of one run: each evaluation replaced the previous one's plot."""
    out = tmp_path / "out"
    twin = tmp_path / "elsewhere" / members[0].name  # the same file name in another folder, other weights
    twin.parent.mkdir()
    _variant(members[0], twin, noise=0.05, seed=9, mean=0.5, std=0.25)
    runs = [members[0], members[1], twin, list(members), [members[1], members[0]]]
    pngs = [evaluate(m, synthetic_csv, "PublicTest", device="cpu", out_dir=out, progress=False).confusion_png
            for m in runs]
    # the same ensemble in another order is the same mean of probabilities: its plot replaces its own (QA)
    assert pngs[4] == pngs[3]
    assert len(set(pngs)) == len(runs) - 1 and len(list(out.glob("*.png"))) == len(runs) - 1, pngs
    assert "_ensemble2-" in pngs[3] and pngs[0].rsplit("/", 1)[-1].startswith(f"confusion_{members[0].stem}-")


def test_ensemble_refuses_a_member_given_twice_or_copied(members, synthetic_csv, tmp_path):
    """``--model nano --model nano`` printed an 'ensemble of fer_nano, fer_nano' that is nano alone."""
    with pytest.raises(CheckpointError, match="is given twice"):
        evaluate([members[0], members[1], members[0]], synthetic_csv, "PublicTest", device="cpu", progress=False)
    copy = tmp_path / "copy.pt"
    copy.write_bytes(members[0].read_bytes())
    with pytest.raises(CheckpointError, match=f"holds the same weights as {members[0]}"):
        evaluate([members[0], copy], synthetic_csv, "PublicTest", device="cpu", progress=False)
    r = runner.invoke(app, ["eval", "--model", "nano", "--model", "nano", "--data", str(synthetic_csv)])
    assert r.exit_code == 1 and "is given twice" in " ".join(r.stderr.split())


def test_a_model_with_non_finite_outputs_is_refused_not_scored(members, synthetic_csv, tmp_path):
    """A checkpoint with NaN weights scored 'accuracy 0.1429' (argmax of NaN is class 0), exit 0, alone or in an
    ensemble."""
    payload = torch.load(members[0], map_location="cpu", weights_only=True)
    key = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    payload["state_dict"][key] = torch.full_like(payload["state_dict"][key], float("nan"))
    for k in ("format", "fer_edge_version"):
        payload.pop(k, None)
    bad = save_checkpoint(tmp_path / "nan.pt", payload)
    for model in (bad, [members[0], bad]):
        with pytest.raises(CheckpointError, match=r"nan.pt: its outputs are not finite numbers \(NaN or inf\) on "
                                                  r"84 of 84 images"):
            evaluate(model, synthetic_csv, "PublicTest", device="cpu", out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    r = runner.invoke(app, ["eval", "--model", str(bad), "--data", str(synthetic_csv), "--json"])
    assert r.exit_code == 1 and "not finite" in r.stderr and r.stdout == ""


def test_a_checkpoint_naming_a_model_that_cannot_be_built_names_its_file(members, synthetic_csv, tmp_path):
    payload = torch.load(members[0], map_location="cpu", weights_only=True)
    for k in ("format", "fer_edge_version"):
        payload.pop(k, None)
    unknown = save_checkpoint(tmp_path / "unknown.pt", {**payload, "model": "nope_net"})
    wrong_kwargs = save_checkpoint(tmp_path / "kwargs.pt", {**payload, "model_kwargs": {"hidden": 3}})
    for path, words in ((unknown, "unknown model 'nope_net'"), (wrong_kwargs, "hidden")):
        with pytest.raises(CheckpointError, match=f"{path}: .*{words}"):
            evaluate([members[0], path], synthetic_csv, "PublicTest", device="cpu", progress=False)


@pytest.mark.parametrize("args, words", [
    (["--split", ""], "--split"),
    (["--out", ""], "--out"),
    (["--data", ""], "--data"),
])
def test_cli_eval_refuses_empty_values_instead_of_using_defaults(members, synthetic_csv, tmp_path, monkeypatch,
                                                                 args, words):
    """``--split ""`` evaluated PublicTest and ``--out ""`` wrote into the current folder (a script's unset
    variable); ``--data ""`` read the current folder."""
    monkeypatch.chdir(tmp_path)
    base = {"--data": str(synthetic_csv), "--model": str(members[0])}
    base.update(dict(zip(args[::2], args[1::2])))
    r = runner.invoke(app, ["eval", *[x for kv in base.items() for x in kv]])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and words in out and "is empty" in out, out  # a usage error, each of them
    assert not list(tmp_path.glob("*.png"))


def test_an_interrupted_eval_says_what_it_wrote(members, synthetic_csv, tmp_path, monkeypatch):
    """QA: Ctrl-C ended eval with no word and SIGTERM killed it (exit 143); now both print one line, exit 130."""
    import signal

    import fer_edge.training as training_mod

    real = training_mod.evaluate
    args = ["eval", "--model", str(members[0]), "--data", str(synthetic_csv), "--device", "cpu", "--json"]
    old = tmp_path / "a" / "confusion_old.png"
    old.parent.mkdir()
    old.write_bytes(b"an earlier plot")

    def stopped_before(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(training_mod, "evaluate", stopped_before)
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    err = " ".join(r.stderr.split())
    assert r.exit_code == 130 and f"interrupted: nothing was written (no new confusion matrix in {tmp_path / 'a'}/)" \
        in err, r.output
    assert r.stdout == "" and old.read_bytes() == b"an earlier plot"

    def terminated_after(*a, **k):  # SIGTERM once the plot is written: KeyboardInterrupt, not death by signal
        res = real(*a, **k)
        signal.raise_signal(signal.SIGTERM)
        return res

    monkeypatch.setattr(training_mod, "evaluate", terminated_after)
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])
    (png,) = (tmp_path / "b").glob("confusion_*.png")
    assert r.exit_code == 130 and f"interrupted: {png} was written before it" in " ".join(r.stderr.split()), r.output


def test_eval_of_a_checkpoint_in_a_folder_it_cannot_write_still_evaluates(members, synthetic_csv, tmp_path,
                                                                          monkeypatch):
    """QA (code reading): the confusion matrix's default place is the checkpoint's folder, and a folder one may
    read but not write (a read-only mount, a colleague's runs) refused the whole eval, --json too."""
    import fer_edge.utils

    monkeypatch.chdir(tmp_path)
    ro = members[0].resolve().parent
    real = fer_edge.utils._unwritable
    monkeypatch.setattr(fer_edge.utils, "_unwritable", lambda q: "read-only file system" if Path(q).resolve() == ro
                        else real(q))
    r = runner.invoke(app, ["eval", "--model", str(members[0]), "--data", str(synthetic_csv), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["confusion_png"].startswith("fer-edge-eval/")
    assert f"note: the checkpoint's folder {ro} cannot be written (read-only file system)" in " ".join(
        r.stderr.split()), r.stderr
    r = runner.invoke(app, ["eval", "--model", str(members[0]), "--data", str(synthetic_csv), "--out", str(ro)])
    assert r.exit_code == 1 and "cannot write into" in r.stderr, r.output  # one the user names is still refused


def test_eval_on_the_split_a_checkpoint_trained_on_notes_it(tiny_checkpoint, synthetic_csv, tmp_path):
    """QA: train and soup warn when their validation split is training data; eval printed a plain accuracy."""
    from fer_edge.training.trainer import data_fingerprint

    raw = torch.load(tiny_checkpoint, weights_only=True)
    raw["data"] = {"train": data_fingerprint(load_split(synthetic_csv, "Training", progress=False)),
                   "val": data_fingerprint(load_split(synthetic_csv, "PublicTest", progress=False))}
    ck = tmp_path / "run" / "best.pt"
    ck.parent.mkdir()
    save_checkpoint(ck, {k: v for k, v in raw.items() if k not in ("format", "fer_edge_version")})
    r = runner.invoke(app, ["eval", "--model", str(ck), "--data", str(synthetic_csv), "--split", "train"],
                      env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert f"note: Training is training data ({ck} trained on it): the accuracy is measured on images the model " \
           "learned" in " ".join(r.stderr.split()), r.stderr
    assert evaluate(ck, synthetic_csv, "PublicTest", device="cpu", progress=False).notes == []
    r = runner.invoke(app, ["eval", "--model", str(ck), "--data", str(synthetic_csv), "--split", "Training", "--json"])
    assert "Training is training data" in json.loads(r.stdout)["notes"][0]
