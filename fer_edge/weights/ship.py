"""Package a trained run's ``best.pt`` as a shipped weight and record its metadata.

    python -m fer_edge.weights.ship runs/fer_small/best.pt --name small --replace \\
        --recipe "fer-edge train ..." --hardware "2-core x86-64 CPU" --train-time "62 min"

Copies the checkpoint's model state (no optimizer state) into ``fer_edge/weights/<name>.pt``
and writes the entry in ``weights.json``: architecture, parameters, MACs (counted),
normalisation, labels and the metrics recorded in the checkpoint. A name already shipped is
replaced only with ``--replace`` (the error says the architecture registered under it).

Every check (name, parity gate, metrics, the file-size limit on the exact bytes to be shipped)
runs before anything in the weights folder changes: the file is staged outside it, then put in
place by renames inside the folder (the earlier file aside, the new one in, then ``weights.json``).
If any of them fails, the earlier file is renamed back (or the new one removed), so the folder is as
it was; Ctrl-C or SIGTERM is held while they run. An interrupt ends with one line saying whether the
weight was shipped (exit 130).
"""
from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import typer

from fer_edge.cli.common import handle_errors
from fer_edge.errors import FerEdgeError
from fer_edge.weights import WEIGHTS_DIR, WeightMeta

MAX_BYTES = 4 * 1024 * 1024

#: A shipped weight's name: a plain file stem (letters, digits, ``_``, ``.``, ``-``; no ``..``).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_NAME_LEN = 64

cli = typer.Typer(add_completion=False)


def name_problems(name: str) -> list[str]:
    """What is wrong with ``name`` as a shipped weight's name ([] = a plain stem that stays in the weights folder)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return [f"--name {name!r} is not a plain name: use letters, digits, '_', '.' and '-', starting with a "
                "letter or digit (no path separators, spaces or empty name)"]
    problems = []
    if ".." in name or name.endswith("."):
        problems.append(f"--name {name!r} must not contain '..' or end with '.'")
    if name.lower().endswith(".pt"):
        problems.append(f"--name {name!r}: give the name without '.pt' (the file is <name>.pt)")
    if len(name) > MAX_NAME_LEN:
        problems.append(f"--name {name!r} is longer than {MAX_NAME_LEN} characters")
    return problems


def _json_problems(obj, path: str = "") -> list[tuple[str, str]]:
    """``(kind, path)`` of each value in ``obj`` that weights.json cannot hold as it is: kind ``"non-finite"`` for
    NaN/inf (strict JSON refuses them), ``"not-plain"`` for a tensor, an object or a non-text key (weights.json
    would get their text, not their number)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [("non-finite", path or "value")]
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return []
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            here = f"{path}.{k}" if path else (k if isinstance(k, str) else repr(k))
            out += _json_problems(v, here) if isinstance(k, str) else [("not-plain", here)]
        return out
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _json_problems(v, f"{path}[{i}]")]
    return [("not-plain", f"{path or 'value'} ({type(obj).__name__})")]


def _non_finite(obj) -> list[str]:
    """The paths of NaN/inf numbers in ``obj`` (they would make weights.json invalid JSON)."""
    return [p for kind, p in _json_problems(obj) if kind == "non-finite"]


def _not_plain(obj) -> list[str]:
    """The paths of values in ``obj`` that JSON does not hold as they are (a tensor, an object)."""
    return [p for kind, p in _json_problems(obj) if kind == "not-plain"]


def lower_gate(gate: dict) -> tuple[dict, list[str]]:
    """A parity gate with its precision names in lower case, as the export command's overrides take them; two
    names that differ only in case are a problem."""
    out: dict = {}
    problems = []
    for k, v in gate.items():
        key = k.lower() if isinstance(k, str) else k
        if key in out:
            problems.append(f"precision {key!r} is given twice (names are matched case-insensitively)")
        out[key] = v
    return out, problems


def _read_entries() -> list[dict]:
    from fer_edge.errors import CheckpointError

    table = WEIGHTS_DIR / "weights.json"
    if not table.is_file():
        return []
    try:
        entries = json.loads(table.read_text())
    except ValueError as e:
        raise CheckpointError(f"{table} is not valid JSON ({e}): fix or restore it before shipping") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "name" in e for e in entries):
        raise CheckpointError(f"{table} is not a list of weight entries: fix or restore it before shipping")
    return entries


def _table_text(entries: list[dict], meta: WeightMeta) -> str:
    """weights.json with ``meta``'s entry written or replaced (strict JSON: a NaN is refused, not written)."""
    from fer_edge.errors import CheckpointError

    out = sorted([e for e in entries if e["name"] != meta.name] + [asdict(meta)], key=lambda e: e["name"])
    bad = [f"{e['name']}: {p}" for e in out for p in _non_finite(e)]
    if bad:
        raise CheckpointError(f"weights.json would hold numbers that are not finite ({', '.join(bad)}): "
                              "it must stay valid JSON")
    return json.dumps(out, indent=2, allow_nan=False) + "\n"


def _site_dirs() -> list[Path]:
    """The folders this interpreter installs packages into."""
    import site
    import sysconfig

    paths = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    paths.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    paths.add(site.getusersitepackages())
    return [Path(p) for p in paths if p]


def check_source_checkout(action: str) -> None:
    """Refuse to change the weights folder of an installed copy of fer-edge (a wheel in site-packages): pip owns
    those files, so an upgrade or uninstall would lose or orphan the weight. Shipping is for a source checkout."""
    from fer_edge.errors import CheckpointError

    folder = WEIGHTS_DIR.resolve()
    for site_dir in _site_dirs():
        try:
            folder.relative_to(site_dir.resolve())
        except (ValueError, OSError):
            continue
        raise CheckpointError(
            f"cannot {action}: {WEIGHTS_DIR} belongs to fer-edge installed in {site_dir}, whose files pip owns (an "
            "upgrade or uninstall would lose or orphan it); run this in a source checkout installed with "
            "pip install -e . (nothing was changed)")


def ship(checkpoint: Path, name: str, recipe: str, hardware: str, train_time: str,
         extra_metrics: dict | None = None, parity_gate: dict | None = None,
         parity_gate_reason: str = "", replace_existing: bool = False,
         log: Callable[[str], None] | None = None) -> WeightMeta:
    """Copy ``checkpoint`` in as weight ``name`` and write its entry. A new weight starts from the
    default parity gate unless ``parity_gate`` is given (a gate measured on the old file does not carry over).

    A ``name`` already shipped (in ``weights.json``, or a ``<name>.pt`` already in the folder) is refused
    unless ``replace_existing``. Nothing in the weights folder changes unless every check passes.
    ``extra_metrics`` may replace a metric the checkpoint recorded (e.g. the accuracy measured on the CSV of a run
    that trained on the image folders): ``log`` gets a note for each replaced value.
    """
    import torch

    from fer_edge.checkpoint import load_checkpoint, save_checkpoint
    from fer_edge.errors import CheckpointError, OptionError
    from fer_edge.models import count_macs, count_params
    from fer_edge.parity import threshold_problems

    log = log or (lambda msg: None)
    check_source_checkout(f"ship {name!r}")
    # 1. the arguments, all problems at once, before any work
    problems = name_problems(name)
    for option, value in (("--recipe", recipe), ("--hardware", hardware), ("--train-time", train_time)):
        if not str(value).strip():
            problems.append(f"{option} is empty: say how the weight was made (README's section for it quotes it)")
    parity_gate, twice = lower_gate(parity_gate or {})
    problems += [f"--parity-gate: {p}" for p in twice + threshold_problems(parity_gate, objects_ok=False)]
    if parity_gate and not str(parity_gate_reason).strip():
        problems.append("a weight's own parity gate needs a reason (--parity-gate-reason: the figures measured "
                        "on the weight)")
    if not parity_gate and str(parity_gate_reason).strip():
        problems.append("--parity-gate-reason without --parity-gate: the weight gets the default gate, which needs "
                        "no reason")
    if extra_metrics is not None and not isinstance(extra_metrics, dict):
        problems.append(f"--metrics-json: expected a JSON object, got {extra_metrics!r}")
    else:
        problems += [f"--metrics-json: {p} is not a finite number" for p in _non_finite(extra_metrics or {})]
    if problems:  # option values wrong on their own: a usage error (exit 2)
        raise OptionError("cannot ship: " + "; ".join(problems))

    # 2. the checkpoint, and whether the name is taken
    ck = load_checkpoint(checkpoint)
    model = ck.build_model()
    dest = WEIGHTS_DIR / f"{name}.pt"
    if (dest.exists() or dest.is_symlink()) and not (dest.is_file() and not dest.is_symlink()):
        raise CheckpointError(f"{dest} exists and is not a plain file (a folder or a link): move it away first "
                              "(nothing was shipped)")
    entries = _read_entries()
    old = next((e for e in entries if e["name"] == name), None)
    clash = [e["name"] for e in entries if e["name"] != name and e["name"].lower() == name.lower()]
    if clash:  # on a case-insensitive file system both would be the same file
        raise CheckpointError(f"--name {name!r} differs only in case from the shipped {clash[0]!r}: choose another "
                              f"--name, or use {clash[0]!r} (with --replace) to replace it")
    if not replace_existing and (old is not None or dest.exists()):
        if old is None:
            what = f"{dest} already exists (not listed in weights.json)"
        elif old.get("architecture") != ck.model_name:
            what = (f"{name!r} is already shipped as {old.get('architecture')}, and this checkpoint is "
                    f"{ck.model_name} (a different architecture)")
        else:
            what = f"{name!r} is already shipped ({old.get('architecture')})"
        raise CheckpointError(f"{what}: pass --replace to replace it, or choose another --name")

    # 3. stage the exact file outside the weights folder and check it
    keep = {k: ck.raw[k] for k in ("model", "labels", "normalization", "train_config", "metrics",
                                   "data", "epoch") if k in ck.raw}
    # the constructor defaults go in too, so the weight keeps loading if a factory's defaults change
    keep["model_kwargs"] = ck.resolved_model_kwargs()
    with tempfile.TemporaryDirectory(prefix="fer-edge-ship-") as td:
        staged = Path(td) / dest.name
        save_checkpoint(staged, {**keep, "state_dict": model.state_dict()})
        size = staged.stat().st_size
        if size > MAX_BYTES:
            raise CheckpointError(f"{name}: {size} bytes is over the {MAX_BYTES}-byte limit "
                                  "(nothing was shipped; the weights folder is unchanged)")
        shipped_model = load_checkpoint(staged).build_model().eval()  # the file as shipped loads
        with torch.no_grad():  # and answers: NaN weights would give NaN for every image
            probe = torch.linspace(-2.0, 2.0, 2 * 48 * 48).reshape(2, 1, 48, 48)
            logits = shipped_model(probe)
        if not bool(torch.isfinite(logits).all()):
            raise CheckpointError(f"{checkpoint}: the model's outputs are not finite (NaN or inf weights?); "
                                  "nothing was shipped")
        params = count_params(shipped_model)
        extra = dict(extra_metrics or {})
        if "params" in extra and extra["params"] != params:
            raise CheckpointError(f"--metrics-json: params {extra['params']!r} is not the model's {params} "
                                  "(counted); leave it out")
        for k, v in extra.items():
            if k in ck.metrics and ck.metrics[k] != v:
                log(f"--metrics-json replaces the checkpoint's {k} ({ck.metrics[k]!r} -> {v!r})")
        meta = WeightMeta(
            name=name, architecture=ck.model_name, file=dest.name, params=params,
            macs=count_macs(shipped_model), mean=ck.normalization.mean, std=ck.normalization.std,
            metrics={**ck.metrics, **extra}, recipe=recipe, hardware=hardware, train_time=train_time,
            labels=tuple(ck.labels), parity_gate=dict(parity_gate), parity_gate_reason=parity_gate_reason,
        )
        bad = _non_finite(meta.metrics)
        if bad:
            raise CheckpointError(f"{name}: metrics {', '.join(bad)} are not finite numbers (weights.json must be "
                                  "valid JSON); fix the checkpoint's metrics or --metrics-json")
        odd = _not_plain(meta.metrics)
        if odd:
            raise CheckpointError(f"{name}: metrics {', '.join(odd)} are not plain numbers or text (weights.json "
                                  "would get their text); fix the checkpoint's metrics or --metrics-json")
        text = _table_text(entries, meta)

        # 4. commit, by renames inside the weights folder: the earlier file (if any) aside, the new file in, then
        # the entry. Until the entry is in, any failure renames the earlier file back (or removes the new one),
        # so the file and its entry never disagree; a rename needs no free space
        _commit(dest, staged, WEIGHTS_DIR / "weights.json", text)
    return meta


def _commit(dest: Path, staged: Path, table: Path, text: str) -> None:
    """Put ``staged`` in place as ``dest`` and ``text`` as ``table``, both or neither (see ship's step 4)."""
    import os

    def temp(target: Path, tag: str) -> Path:
        """A free name beside ``target``; the file is made by its writer, with the usual permissions (mkstemp's
        own file would be private to this user, and the shipped file would keep that)."""
        fd, name = tempfile.mkstemp(prefix=f".{tag}-{target.stem}-", suffix=target.suffix, dir=target.parent)
        os.close(fd)
        os.unlink(name)
        return Path(name)

    from fer_edge.utils import TEXT_FILE, interrupts_deferred

    new_file, new_table = temp(dest, "tmp"), temp(table, "tmp")
    aside = temp(dest, "old") if dest.exists() else None
    try:
        shutil.copyfile(staged, new_file)
        new_table.write_text(text, **TEXT_FILE)
        # Ctrl-C and SIGTERM are held while the renames (or their undoing) run, and raised once they are done: an
        # interrupt between two of them would leave <name>.pt missing, the earlier file under .old-*
        with interrupts_deferred():
            _swap(dest, new_file, aside, new_table, table)
    finally:
        left = []
        for leftover in (new_file, new_table, aside):
            try:
                if leftover is not None:
                    leftover.unlink(missing_ok=True)
            except OSError as e:  # never hides the error that stopped the commit, nor fails one that happened
                left.append(f"{leftover} ({e.strerror or e})")
        if left:
            import logging

            logging.getLogger("fer_edge.weights").warning("could not remove %s: remove it by hand", ", ".join(left))


def _swap(dest: Path, new_file: Path, aside: Path | None, new_table: Path, table: Path) -> None:
    """The renames of :func:`_commit`: ``dest`` to ``aside`` (when there is an earlier file), ``new_file`` to
    ``dest``, ``new_table`` to ``table``. A failure before the last renames the earlier file back (over the new one
    if it was placed) or removes the new one, so the file and its entry never disagree; a rename needs no free
    space."""
    import os

    moved_aside = placed = False
    try:
        if aside is not None:
            os.replace(dest, aside)
            moved_aside = True
        os.replace(new_file, dest)
        placed = True
        os.replace(new_table, table)
    except BaseException:
        if moved_aside:
            os.replace(aside, dest)  # the earlier weight back, over the new file if it was placed
        elif placed:
            dest.unlink(missing_ok=True)
        raise


def json_option(value: str, option: str) -> dict:
    """A JSON object given on the command line, or a usage error naming the option."""
    try:
        out = json.loads(value)
    except ValueError as e:
        raise typer.BadParameter(f"not valid JSON: {e}", param_hint=option) from None
    if not isinstance(out, dict):
        raise typer.BadParameter(f"expected a JSON object, got {value!r}", param_hint=option)
    return out


def set_parity_gate(name: str, gate: dict, reason: str) -> WeightMeta:
    """Give shipped weight ``name`` its own parity gate (``{}`` restores the defaults, with no ``reason``), keeping
    the rest of its entry."""
    from fer_edge.errors import CheckpointError, OptionError
    from fer_edge.weights import _load_table, check_parity_gate

    check_source_checkout(f"change {name!r}'s parity gate")
    gate, twice = lower_gate(gate)
    if twice:
        raise OptionError("invalid parity gate: " + "; ".join(twice))
    check_parity_gate(gate, reason, reason_option="--reason")
    table = _load_table()
    if name not in table:
        raise CheckpointError(f"no shipped weight {name!r} (shipped: {', '.join(table) or 'none'})")
    meta = replace(table[name], parity_gate=dict(gate), parity_gate_reason=reason if gate else "")
    _write_entry(meta)
    return meta


def _write_entry(meta: WeightMeta) -> None:
    from fer_edge.utils import write_text_atomic

    write_text_atomic(WEIGHTS_DIR / "weights.json", _table_text(_read_entries(), meta))


@cli.command()
@handle_errors
def main(checkpoint: Path = typer.Argument(..., exists=True), name: str = typer.Option(...),
         recipe: str = typer.Option(...), hardware: str = typer.Option(...), train_time: str = typer.Option(...),
         metrics_json: str = typer.Option("{}", help="Extra measured metrics as JSON."),
         parity_gate: str = typer.Option(
             "{}", help='The weight\'s own export gate as JSON, e.g. \'{"int8": {"min_agreement": 0.97}}\'.'),
         parity_gate_reason: str = typer.Option("", help="Why, with the figures measured on this weight."),
         replace_existing: bool = typer.Option(
             False, "--replace", help="Replace the weight already shipped under --name (its file and entry).")) -> None:
    """Ship CHECKPOINT as fer_edge/weights/<name>.pt and write its entry in weights.json (README: "Pretrained
    models"); every check runs before the weights folder changes."""
    from fer_edge.utils import sigterm_as_interrupt

    before = _entry(name)
    try:
        with sigterm_as_interrupt():  # SIGTERM too: one line saying whether the weight was shipped, exit 130
            try:
                meta = ship(checkpoint, name, recipe, hardware, train_time, json_option(metrics_json, "--metrics-json"),
                            json_option(parity_gate, "--parity-gate"), parity_gate_reason,
                            replace_existing=replace_existing, log=lambda msg: typer.echo(f"note: {msg}", err=True))
            except OSError as e:  # e.g. a read-only install: name the folder, not the hidden temporary file
                where = Path(e.filename).parent if e.filename else WEIGHTS_DIR
                raise FerEdgeError(f"cannot write into {where} ({e.strerror or e}); nothing was shipped") from None
            if before is not None:
                change = (f", architecture {before.get('architecture')} -> {meta.architecture}"
                          if before.get("architecture") != meta.architecture else "")
                typer.echo(f"note: replaced the shipped {name!r}{change}", err=True)
            typer.echo(json.dumps(asdict(meta), indent=2))
    except KeyboardInterrupt:
        now = _entry(name)
        done = now is not None and now != before
        typer.echo(f"interrupted: {name!r} was {'shipped' if done else 'not shipped; the weights folder is as it was'}",
                   err=True)
        raise typer.Exit(130) from None


def _entry(name: str) -> dict | None:
    """``name``'s entry in weights.json now; None when it has none, or the name or the table is not readable."""
    if name_problems(name):
        return None
    try:
        return next((e for e in _read_entries() if e["name"] == name), None)
    except FerEdgeError:
        return None


if __name__ == "__main__":
    import sys

    from fer_edge.console import run_script
    from fer_edge.utils import command_environment

    command_environment()  # as the fer-edge command: ONNX Runtime's telemetry off (a user's setting wins)
    sys.exit(run_script(cli))  # a closed stdout (`| head`): exit 141 quietly, as fer-edge (1: a failure's)
