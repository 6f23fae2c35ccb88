"""The model zoo: every registered model is checked by the same tests (parametrized over list_models())."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fer_edge.errors import ModelError
from fer_edge.models import (
    count_macs,
    count_params,
    create_model,
    describe_models,
    format_count,
    get_model_entry,
    list_models,
    register_model,
    resolved_model_kwargs,
)

MODELS = list_models()
EXPECTED = {
    "baseline_cnn", "custom_cnn", "simple_cnn", "keras_cnn", "enhanced_cnn", "cbam_cnn", "resnet18",
    "fer_nano", "fer_small",
}


def _input(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, 48, 48, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cli_json() -> dict[str, dict]:
    """``fer-edge models --json``, run once, keyed by model name."""
    from fer_edge.cli import app

    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    return {r["name"]: r for r in rows}


def test_expected_models_registered():
    assert EXPECTED <= set(MODELS)


# --- every model --------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_forward_shape(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        y = model(_input(2))
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", MODELS)
def test_num_classes(name):
    model = create_model(name, num_classes=5).eval()
    with torch.no_grad():
        assert model(_input(1)).shape == (1, 5)


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    loss = torch.nn.functional.cross_entropy(model(_input(2)), torch.tensor([0, 3]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_eval_is_deterministic(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = _input(2)
    with torch.no_grad():
        a, b = model(x), model(x)
        # one image scored alone gives the same logits as within a batch (BN in eval mode)
        c = model(x[:1])
    assert torch.equal(a, b)
    torch.testing.assert_close(c, a[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_cli_json_matches_counts(name, cli_json):
    row = cli_json[name]
    model = create_model(name)
    assert row["params"] == count_params(model)
    assert row["macs"] == count_macs(model)
    assert row["source"] == get_model_entry(name).source
    assert row["source"].strip()


@pytest.mark.parametrize("name", MODELS)
def test_bad_kwargs_raise_model_error(name):
    with pytest.raises(ModelError, match=name):
        create_model(name, no_such_option=1)


@pytest.mark.parametrize("name", MODELS)
def test_resolved_kwargs_rebuild_the_same_model(name):
    """What checkpoints record: passed kwargs plus every default, enough to rebuild the model."""
    model = create_model(name)
    kwargs = resolved_model_kwargs(model, {})
    json.dumps(kwargs)  # plain values: they go into checkpoints and JSON
    rebuilt = create_model(name, **kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_resolved_kwargs_keep_what_was_passed_and_fill_the_rest():
    model = create_model("fer_small", widths=(8, 16), stem=8)
    kw = resolved_model_kwargs(model, {"widths": (8, 16), "stem": 8})
    assert kw["widths"] == [8, 16] and kw["stem"] == 8
    assert {"dropout", "stem_convs"} <= set(kw)  # the defaults, recorded
    # torchvision's ResNet needs positional block/layers: its kwargs come back as passed
    assert resolved_model_kwargs(create_model("resnet18"), {"zero_init_residual": True}) == {
        "zero_init_residual": True}


# --- the registry and the command ---------------------------------------------
def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError) as exc:
        create_model("no_such_model")
    msg = str(exc.value)
    assert "no_such_model" in msg
    for name in MODELS:
        assert name in msg


def test_cli_json_lists_every_model(cli_json):
    assert sorted(cli_json) == MODELS
    for row in cli_json.values():
        assert set(row) == {"name", "params", "macs", "source"}
        assert isinstance(row["params"], int) and isinstance(row["macs"], int)


def test_cli_table():
    from fer_edge.cli import app

    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    for name in MODELS:
        assert name in result.stdout


def test_describe_models_subset():
    rows = describe_models(["fer_nano"])
    assert [r["name"] for r in rows] == ["fer_nano"]
    with pytest.raises(ModelError):
        describe_models(["no_such_model"])


@pytest.mark.parametrize(
    "n, text",
    [(0, "0"), (950, "950"), (82383, "82.4K"), (999_999, "1M"), (12_402_864, "12.4M"), (1_247_038_976, "1.25G")],
)
def test_format_count(n, text):
    assert format_count(n) == text


# --- sizes the zoo promises ---------------------------------------------------
def test_edge_model_budgets():
    assert count_params(create_model("fer_nano")) < 100_000
    assert count_params(create_model("fer_small")) < 1_000_000


def test_enhanced_cnn_size_and_depth():
    model = create_model("enhanced_cnn")
    assert abs(count_params(model) - 6.7e6) / 6.7e6 < 0.05
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 12
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 5


def test_resnet18_stem_is_adapted():
    model = create_model("resnet18")
    conv1 = model.conv1
    assert (conv1.in_channels, conv1.kernel_size, conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model.fc.out_features == 7


def test_cbam_cnn_has_three_attention_modules():
    from fer_edge.models.cbam import CBAM

    assert sum(isinstance(m, CBAM) for m in create_model("cbam_cnn").modules()) == 3


def test_fer_small_extra_stem_convs_run_at_full_resolution():
    one = create_model("fer_small", stem_convs=1)
    two = create_model("fer_small")
    # the extra 32->32 3x3 conv-BN at 48x48: 9,216 weights + 64 BN parameters, 21.2M MACs
    assert count_params(two) - count_params(one) == 32 * 32 * 9 + 2 * 32
    assert count_macs(two) - count_macs(one) == 32 * 32 * 9 * 48 * 48
    assert two(_input()).shape == (2, 7)
    with pytest.raises(ModelError, match="stem_convs"):
        create_model("fer_small", stem_convs=0)


@pytest.mark.parametrize("kwargs, words", [
    ({"widths": 5}, "'int' object is not iterable"),
    ({"dropout": 2}, "ValueError: dropout probability"),
    ({"widths": [-1, 2, 3, 4]}, "RuntimeError: .*negative dimension"),
])
def test_values_a_model_cannot_take_are_a_model_error(kwargs, words):
    with pytest.raises(ModelError, match=f"model 'fer_nano' cannot be built with .*{words}"):
        create_model("fer_nano", **kwargs)


def test_a_factory_without_a_name_is_refused():
    with pytest.raises(ModelError, match="needs a named function"):
        register_model(lambda num_classes=7: torch.nn.Linear(1, num_classes))
    assert "<lambda>" not in list_models()


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, True])
def test_create_model_refuses_a_class_count_below_one(num_classes):
    """0 built a model with no outputs; -1 raised torch's RuntimeError."""
    from fer_edge.errors import ModelError
    from fer_edge.models import create_model

    with pytest.raises(ModelError, match="num_classes must be a whole number of at least 1"):
        create_model("fer_nano", num_classes=num_classes)


def test_readme_models_table_is_what_fer_edge_models_prints():
    """README quoted paraphrased sources in another order; the table is now the command's rows, checked here."""
    from pathlib import Path

    from fer_edge.models import describe_models, format_count

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("| model | params | MACs/image | source |")
    table = readme[start:readme.index("\n\n", start)].splitlines()[2:]
    expected = [f"| `{r['name']}` | {format_count(r['params'])} | {format_count(r['macs'])} | {r['source']} |"
                for r in describe_models()]
    assert table == expected


# --- constructor errors become ModelErrors --------------------------------------
@pytest.mark.parametrize("reduction", [0, -1, 2.5, True, "8"])
def test_cbam_reduction_must_be_a_whole_number_of_at_least_one(reduction):
    """reduction=0 raised a raw ZeroDivisionError; -1 built a model silently (max(1, 32 // -1))."""
    with pytest.raises(ModelError, match=r"cbam_cnn: reduction must be a whole number of at least 1, got "):
        create_model("cbam_cnn", reduction=reduction)


def test_cbam_block_checks_reduction_on_its_own():
    from fer_edge.models.cbam import CBAM

    with pytest.raises(ModelError, match="reduction must be a whole number"):
        CBAM(32, reduction=0)
    assert create_model("cbam_cnn", reduction=64)(_input()).shape == (2, 7)  # 32 // 64 -> 1 hidden unit


def test_unrelated_type_error_is_not_called_bad_arguments():
    """The registry sniffed "argument" in TypeError texts: this one is about %-formatting a string."""
    with pytest.raises(ModelError) as exc:
        create_model("simple_cnn", widths="abc")
    msg = str(exc.value)
    assert "bad arguments" not in msg
    assert msg.startswith("model 'simple_cnn' cannot be built with {'widths': 'abc'}: TypeError: ")
    assert "not all arguments converted" in msg


def test_unknown_keyword_names_model_kwargs_and_keyword():
    with pytest.raises(ModelError) as exc:
        create_model("fer_nano", no_such_option=1)
    msg = str(exc.value)
    assert msg.startswith("model 'fer_nano' cannot be built with {'no_such_option': 1}: TypeError: ")
    assert "unexpected keyword argument 'no_such_option'" in msg


def _register_temporarily(monkeypatch, name, factory):
    from fer_edge.models import registry

    monkeypatch.setitem(registry._REGISTRY, name, registry.ModelEntry(name, factory, "test", __name__))


@pytest.mark.parametrize("error", [ZeroDivisionError("division by zero"), KeyError("width"),
                                   AssertionError("odd"), AttributeError("no attr"), OverflowError("big")])
def test_any_constructor_exception_with_kwargs_is_a_model_error(monkeypatch, error):
    def boom(num_classes=7, **kwargs):
        raise error

    _register_temporarily(monkeypatch, "boom_model", boom)
    with pytest.raises(ModelError, match=rf"model 'boom_model' cannot be built with \{{'width': 3\}}: "
                                         rf"{type(error).__name__}: "):
        create_model("boom_model", width=3)
    # without kwargs it is a bug in the model itself: it is not dressed up as the caller's mistake
    with pytest.raises(type(error)):
        create_model("boom_model")


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_interrupts_from_a_constructor_pass_through(monkeypatch, error):
    def stop(num_classes=7, **kwargs):
        raise error()

    _register_temporarily(monkeypatch, "stop_model", stop)
    with pytest.raises(error):
        create_model("stop_model", width=3)


def test_a_constructor_model_error_is_passed_unchanged():
    with pytest.raises(ModelError, match=r"^fer_small: stem_convs must be at least 1, got 0$"):
        create_model("fer_small", stem_convs=0)


# --- forward_problem: kwargs that build a model which cannot take a 48x48 image ---
@pytest.mark.parametrize("name", MODELS)
def test_default_build_has_no_forward_problem(name):
    from fer_edge.models import forward_problem

    assert forward_problem(create_model(name)) == ""
    assert forward_problem(create_model(name, num_classes=3)) == ""
    assert forward_problem(create_model(name, num_classes=3), num_classes=3) == ""


@pytest.mark.parametrize("name", MODELS)
def test_create_model_records_num_classes(name):
    assert create_model(name, num_classes=5).num_classes == 5
    assert "num_classes" not in create_model(name).state_dict()


@pytest.mark.parametrize("name", MODELS)
def test_forward_problem_reports_a_wrong_class_count(name):
    from fer_edge.models import forward_problem

    problem = forward_problem(create_model(name), num_classes=5)
    assert problem == "for a batch of 2 images of size (1, 48, 48) the model returns shape (2, 7), not (2, 5)"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("training", [True, False])
def test_forward_problem_restores_each_modules_mode(name, training):
    from fer_edge.models import forward_problem

    model = create_model(name).train(training)
    # a mixed state, as when batch-norm layers are frozen during fine-tuning
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    for m in norms[:1]:
        m.train(not training)
    before = [m.training for m in model.modules()]
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    assert forward_problem(model) == ""
    assert [m.training for m in model.modules()] == before
    after = model.state_dict()
    assert all(torch.equal(stats[k], after[k]) for k in stats)  # eval mode: BN running stats untouched
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("name, kwargs, words", [
    ("simple_cnn", {"widths": [8] * 7}, "Output size is too small"),
    ("custom_cnn", {"widths": [8] * 7}, "Output size is too small"),
    ("fer_small", {"widths": [8] * 7}, "Output size is too small"),
    ("cbam_cnn", {"widths": [8] * 7}, "Output size is too small"),
    ("keras_cnn", {"widths": [8] * 6, "kernels": [3] * 6}, "Output size is too small"),
    ("enhanced_cnn", {"widths": [8] * 6, "depths": [1] * 6}, "Output size is too small"),
    ("fer_nano", {"stem": 1}, "expected weight to be at least 1 at dimension 0"),
])
def test_a_model_shrunk_to_nothing_has_a_forward_problem(name, kwargs, words):
    from fer_edge.models import forward_problem

    model = create_model(name, **kwargs)  # building stays cheap and succeeds: the forward pass fails
    was = [m.training for m in model.modules()]
    problem = forward_problem(model)
    assert problem.startswith("RuntimeError: ") and words in problem
    assert "\n" not in problem
    assert [m.training for m in model.modules()] == was


def test_forward_problem_checks_output_shape_of_any_module():
    from fer_edge.models import forward_problem

    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 3))
    assert forward_problem(head) == ""  # no class count known: any 2 x K output passes
    assert forward_problem(head, num_classes=3) == ""
    assert "returns shape (2, 3), not (2, 7)" in forward_problem(head, num_classes=7)
    conv = torch.nn.Conv2d(1, 4, 3)
    assert "returns shape (2, 4, 46, 46), not (2, number of classes)" in forward_problem(conv)
    assert forward_problem(head, input_size=(1, 32, 32)).startswith("RuntimeError: ")
    assert forward_problem(torch.nn.Identity()) != ""  # 2 x 1 x 48 x 48: not logits

    class Pair(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :7], x

    assert forward_problem(Pair()) == "the model returns a tuple, not a tensor of logits"


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_forward_problem_does_not_run_in_create_model():
    """create_model runs on every checkpoint load: a model that cannot score 48x48 still builds."""
    create_model("simple_cnn", widths=[8] * 7)
