"""``fer-edge export``: a thin command over :func:`fer_edge.exporters.export`."""
from __future__ import annotations

from fer_edge.utils import human_size

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from fer_edge.cli import app
from fer_edge.cli.common import (console, err_console, gate_judged, handle_errors, is_tty, split_value, parse_csv_option,
                                  model_value, path_value, weight_gate_line)
from fer_edge.exporters.openvino import OVERFLOW_FIX

#: ``--overflow-fix`` choices, from the OpenVINO exporter's table.
OverflowFixOption = Enum("OverflowFixOption", {k.replace("-", "_"): k for k in OVERFLOW_FIX}, type=str)


_human = human_size


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


_STATUS_STYLE = {"passed": "green", "failed": "bold red", "not validated": "yellow"}


def _status_text(a) -> str:
    status = a.status
    if status == "not validated":
        why = str(a.validation.get("reason") or "").removeprefix("not validated: ")
        return f"[yellow]not validated ({escape(why)})[/]" if why else "[yellow]not validated[/]"
    return f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"


def artifacts_table(result):
    """The exported artifacts. Every text from outside (a path, a reason) is markup-escaped: a path holding
    ``[/x]`` raised rich's MarkupError after the export, and ``--out 'e[b]x'`` was shown as "Exported to ex"."""
    from rich.table import Table

    t = Table(title=f"Exported to {escape(str(result.out_dir))}",
              caption=f"manifest: {escape(str(result.manifest_path))}")
    for col, just in (("Target", "left"), ("Precision", "left"), ("Size", "right"), ("Agree", "right"),
                      ("Max |diff|", "right"), ("Acc.", "right"), ("Status", "left")):
        t.add_column(col, justify=just, overflow="fold", no_wrap=col != "Status")
    for a in result.artifacts:
        v = a.validation
        prec = a.precision if a.variant == "main" else f"{a.precision} ({a.variant})"
        t.add_row(
            escape(a.target), escape(prec), _human(a.size_bytes),
            _fmt(v.get("agreement"), ".1%"), _fmt(v.get("max_abs_diff"), ".1e"), _fmt(v.get("accuracy"), ".1%"),
            _status_text(a),
        )
    for f in result.failed:
        t.add_row(escape(f["target"]), escape(f["precision"]), "-", "", "", "", "[bold red]export failed[/]")
    return t


def failures_table(result):
    """Every problem in one table: failed exports and artifacts that failed the parity gate."""
    from rich.table import Table

    t = Table(title="Export problems", title_style="bold red", show_lines=True)
    for col in ("Target", "Precision", "Artifact", "Problem"):
        t.add_column(col, overflow="fold")
    for f in result.failed:
        t.add_row(*map(escape, (f["target"], f["precision"], "-", f"export failed: {f['reason']}")))
    for a in result.parity_failures:
        reasons = a.validation.get("failures") or [a.validation.get("reason") or "?"]
        t.add_row(*map(escape, (a.target, a.precision, a.path.name, "\n".join(map(str, reasons)))))
    return t


class _Progress:
    """A rich progress bar on stderr, started at the first export step (data loading shows its own)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress = None
        self.task = None

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if self.progress is None:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=err_console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("exporting", total=event.total)
        if event.stage == "done":
            self.progress.update(self.task, completed=event.total)
            return
        verb = "exporting" if event.stage == "export" else "validating"
        self.progress.update(self.task, completed=event.index, description=f"{verb} {event.target} {event.precision}")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _gate_that_applied(result) -> dict | None:
    """``thresholds_source`` with a shipped weight's gate cut to the precisions it judged here: those of
    artifacts the parity gate ran on (none with --no-validate, none for an int8-only gate of an fp32 export)."""
    return gate_judged(result.manifest.get("thresholds_source"),
                       {a.precision for a in result.artifacts if a.status in ("passed", "failed")})


def shell_path(path) -> str:
    """``path`` as one argument a shell passes on as a path: quoted, and a relative path starting with ``-`` kept
    as ``./-e`` (quoting does not stop the command from taking ``-e`` for an option; pathlib drops the ``./``)."""
    import shlex

    text = str(path)
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def next_steps(result, data: Path | None = None) -> list[str]:
    """What to run next on a clean export, as lines a shell takes as they are (the notes are comments): bench
    the folder on the data the gate used (else ``data``, the data given on the command line), when an artifact
    runs here, and predict with the smallest artifact that passed the gate and runs here."""
    import shlex

    from fer_edge.targets import get_target

    q = shell_path
    here = [a for a in result.artifacts if a.variant == "main" and get_target(a.target).runs_here()]
    if not here:
        return []
    vd = (result.manifest or {}).get("validation_data") or {}
    if vd.get("file") and vd.get("split"):
        where = f"--data {q(vd['file'])} --split {shlex.quote(vd['split'])}"
    else:
        where = f"--data {q(str(data))}" if data is not None else "--data DATA"
    lines = ["next:", f"  fer-edge bench {q(str(result.out_dir))} {where}   "
                      "# latency, throughput and accuracy of every artifact here"]
    passed = [a for a in here if a.status == "passed"]
    if passed:
        best = min(passed, key=lambda a: a.size_bytes)
        lines.append(f"  fer-edge predict --model {q(str(best.path))} PHOTO.jpg   "
                     "# the smallest artifact that passed the gate")
    return lines


def _manifest_state(out: Path) -> tuple[bytes, dict | None, set[str]] | None:
    """The ``manifest.json`` in ``out`` now: its bytes (a rewrite changes them: it is written atomically), its
    content (None when it is not a JSON object) and which of the files it lists are there; None when there is
    none."""
    import json

    from fer_edge.exporters.api import listed_names

    try:
        raw = (out / "manifest.json").read_bytes()
    except OSError:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    data = data if isinstance(data, dict) else None
    return raw, data, {n for n in listed_names(data) if (out / n).exists() or (out / n).is_symlink()}


def _whose(data: dict, checkpoint) -> str:
    """Which checkpoint a manifest's export is of, said against this run's ``checkpoint``: "this checkpoint"
    when the SHA-256 it records is that file's, else the path and SHA-256 it records."""
    from fer_edge.utils import sha256_path
    from fer_edge.weights import resolve_checkpoint

    src = data.get("source") if isinstance(data.get("source"), dict) else {}
    sha = str(src.get("sha256") or "")
    try:
        ours = sha256_path(resolve_checkpoint(checkpoint))
    except Exception:  # not resolved (the interrupt came first, or it is gone): the manifest's record alone
        ours = None
    if ours is not None and sha == ours:
        return "this checkpoint"
    what = f"{src.get('path') or 'an unknown path'} (sha256 {sha[:12] or 'unknown'})"
    return f"another checkpoint, {what}" if ours is not None else f"the checkpoint {what}"


def _interrupted_note(out: Path, checkpoint=None, before: tuple[bytes, dict | None, set[str]] | None = None,
                      started: bool = True, replace: bool = False) -> str:
    """What an interrupted export left in ``out``, from what this run did: ``before``, :func:`_manifest_state`
    when it started; ``started``, whether it reached its first export step (before it, it wrote no manifest; from
    it on, no other export can write one: the folder is locked); ``replace``, whether --replace was given. A
    manifest this run did not write is described as the earlier (or another) export's it is, never as this
    run's (QA: a manifest left by an earlier interrupted run was counted as "this export finished" 5 artifacts;
    another checkpoint's, as "the previous export of this checkpoint")."""
    mpath = out / "manifest.json"
    now = _manifest_state(out)
    data = now[1] if now is not None else None
    if started:
        if now is None:
            if before is not None:  # a manifest was there, and none now: --replace removed it
                earlier = f" of {_whose(before[1], checkpoint)}" if before[1] is not None else ""
                return (f"no artifact finished; nothing listed in {out} (--replace removed the earlier export"
                        f"{earlier}: its manifest and files)")
            return f"no artifact finished; nothing listed in {out}"
        arts = [a for a in (data or {}).get("artifacts") or []
                if isinstance(a, dict) and a.get("variant", "main") == "main"]
        run_id = (data or {}).get("run_id")
        mine = [a for a in arts if a.get("run") == run_id]
        if (data or {}).get("complete"):  # stopped after its final write
            return (f"after the export finished: {mpath} lists the {len(mine)} artifact(s) of this run "
                    "(\"complete\": true); the summary was not printed")
        n_kept = len(arts) - len(mine)
        if not mine:
            kept = (f"; {mpath} lists the {n_kept} artifact(s) of earlier exports of this checkpoint, kept by this "
                    "one (\"complete\": false)" if n_kept else f"; {mpath} lists none (\"complete\": false)")
            return f"no artifact finished{kept}; temporary files were removed"
        kept = f", and the {n_kept} of earlier exports it kept" if n_kept else ""
        names = ", ".join(str(a.get("file")) for a in mine)
        return (f"{mpath} lists the {len(mine)} artifact(s) this export finished{kept} (\"complete\": false; each "
                f"entry's validation.status says whether it was validated); this export's: {names}; temporary "
                "files were removed")
    # stopped before its first export step (loading data, or --replace clearing the folder): it wrote no manifest
    if now is None and before is None:
        return f"no artifact finished; nothing listed in {out}"
    if now is None:
        earlier = f" (of {_whose(before[1], checkpoint)})" if before[1] is not None else ""
        how = "removed by --replace" if replace else "removed meanwhile, not by this export"
        return f"no artifact finished; nothing listed in {out}: the earlier export's manifest{earlier} was {how}"
    if before is None or now[0] != before[0]:
        whose = f" (of {_whose(data, checkpoint)})" if data is not None else ""
        return f"no artifact finished; {mpath} was written meanwhile by another export{whose}, not by this one"
    if data is None:
        return f"no artifact finished; {mpath} is as it was"
    arts = [a for a in data.get("artifacts") or [] if isinstance(a, dict) and a.get("variant", "main") == "main"]
    state = "" if data.get("complete") else "unfinished (\"complete\": false) "
    note = (f"no artifact finished; {mpath} is as it was: it lists the {len(arts)} artifact(s) of an earlier "
            f"{state}export of {_whose(data, checkpoint)}")
    from fer_edge.exporters.api import listed_names

    gone = sorted(n for n in listed_names(data) if n in before[2] and n not in now[2])
    if gone:  # --replace stopped while it removed them
        note += f"; of its files, {', '.join(gone)} are no longer there"
    return note


@app.command("export")
@handle_errors
def export_cmd(
    checkpoint: Optional[str] = typer.Argument(
        None, parser=model_value, metavar="CHECKPOINT",
        help="Checkpoint file or shipped model name (default: the shipped default model)."),
    target: Optional[List[str]] = typer.Option(
        None, "--target", "-t", help="Targets, comma-separated and/or repeated, or 'all' (default: all)."),
    precision: Optional[List[str]] = typer.Option(
        None, "--precision", "-p",
        help="fp32, fp16, int8 (comma-separated and/or repeated; default: all three, a calibrated int8 only with --calib-data)."),
    calib_data: Optional[Path] = typer.Option(
        None, "--calib-data", parser=path_value, metavar="PATH", help="FER2013 CSV or image folder for INT8 calibration (required for ONNX and OpenVINO int8, and Core ML's on macOS)."),
    calib_split: Optional[str] = typer.Option(None, "--calib-split", parser=split_value, metavar="SPLIT", help="Calibration split (default: training)."),
    calib_size: Optional[int] = typer.Option(
        None, "--calib-size", min=1, show_default=False,
        help="Calibration images, stratified by class (default: 500)."),
    calib_seed: int = typer.Option(0, "--calib-seed", min=0, help="Seed of the calibration (and validation) sample."),
    calib_method: Optional[str] = typer.Option(
        None, "--calib-method", help="ONNX INT8 calibration: minmax, entropy or percentile (default: minmax)."),
    overflow_fix: Optional[OverflowFixOption] = typer.Option(
        None, "--overflow-fix", show_default=False,
        help="OpenVINO INT8 only: 7-bit weights in the first quantized convolution only ('first-layer', NNCF's "
             "default; the first convolution stays in float), in every layer but the depthwise convolutions "
             "('enable': for x86 CPUs without VNNI, whose int8 sums can saturate), or in none ('disable')."),
    val_data: Optional[Path] = typer.Option(
        None, "--val-data", parser=path_value, metavar="PATH",
        help="Data for the parity check (default: the calibration data, else the checkpoint's recorded validation "
             "data when it exists here)."),
    val_split: Optional[str] = typer.Option(None, "--val-split", parser=split_value, metavar="SPLIT", help="Validation split (default: the data's "
                                            "validation split, e.g. PublicTest)."),
    val_size: Optional[int] = typer.Option(
        None, "--val-size", min=0, show_default=False,
        help="Validation images (at least 512; 0 or left out: the whole split)."),
    out: Path = typer.Option(Path("exports"), "--out", "-o", parser=path_value, metavar="PATH", help="Output folder (manifest.json goes there)."),
    name: Optional[str] = typer.Option(
        None, "--name", help="File stem of the artifacts, no path (default: the model name)."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Run the parity gate on real images."),
    replace: bool = typer.Option(False, "--replace", help="--out holds another checkpoint's export: remove the "
                                 "files its manifest lists (and that manifest), then export there."),
    min_agreement: Optional[List[str]] = typer.Option(
        None, "--min-agreement", help="Override a threshold: PRECISION=VALUE, e.g. int8=0.97 (fraction)."),
    max_abs_diff: Optional[List[str]] = typer.Option(None, "--max-abs-diff", help="PRECISION=VALUE, e.g. fp32=1e-4."),
    max_kl: Optional[List[str]] = typer.Option(None, "--max-kl", help="PRECISION=VALUE (mean KL in nats)."),
    max_accuracy_drop: Optional[List[str]] = typer.Option(
        None, "--max-accuracy-drop", help="PRECISION=VALUE as a fraction (0.01 = 1 point), e.g. int8=0.02."),
) -> None:
    """Export a checkpoint to ONNX, OpenVINO IR, Core ML and TorchScript (fp32/fp16/int8), gated on real images.

    Checks every artifact that runs here against the PyTorch model on real images and writes DIR/manifest.json.

    Exits non-zero when a target fails or an artifact fails the parity gate (the manifest marks it).
    """
    from fer_edge.exporters import export
    from fer_edge.parity import parse_overrides
    from fer_edge.targets import TARGETS, Precision

    # an empty --target "" / --precision "" (an unset variable in a script) is refused, not taken as "all"
    targets = parse_csv_option(target, [*TARGETS, "all"], "target", option="--target") or ["all"]
    precisions = parse_csv_option(precision, [p.value for p in Precision], "precision", option="--precision") or None
    overrides = parse_overrides({"min_agreement": min_agreement, "max_abs_diff": max_abs_diff, "max_kl": max_kl,
                                 "max_accuracy_drop": max_accuracy_drop})

    fix = overflow_fix.value if overflow_fix is not None else None
    progress = _Progress(is_tty())
    before = _manifest_state(out)  # for the note of an interrupt: what is there is not this run's
    started = False

    def on_progress(event) -> None:
        nonlocal started
        started = True  # its first export step: any manifest in --out from now on is this run's (it holds the lock)
        progress(event)

    try:
        result = export(
            checkpoint, targets, precisions, out,
            calib_data=calib_data, calib_split=calib_split, calib_size=calib_size, calib_seed=calib_seed,
            calib_method=calib_method, overflow_fix=fix, val_data=val_data, val_split=val_split,
            # --val-size 0 (the whole split) is the library's None; given with --no-validate it is passed on, refused
            val_size=None if val_size == 0 and validate else val_size, val_seed=calib_seed, validate=validate,
            threshold_overrides=overrides,
            name=name, progress=on_progress,
            on_warning=lambda w: err_console.print(f"[yellow]warning:[/] {escape(str(w))}", highlight=False,
                                                   soft_wrap=True),
            data_progress=is_tty(), raise_on_failure=False, replace_other=replace,
        )
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (export turns it into KeyboardInterrupt)
        progress.stop()
        typer.echo(f"interrupted: {_interrupted_note(out, checkpoint, before, started, replace)}", err=True)
        raise typer.Exit(130) from None
    finally:
        progress.stop()

    try:
        _summary(result, fix, val_data or calib_data)
    except KeyboardInterrupt:  # the export is finished and its manifest written: say so, not "stopped before"
        typer.echo(f"interrupted: after the export finished: {result.manifest_path} lists this run's artifacts; "
                   "the summary was not printed", err=True)
        raise typer.Exit(130) from None


def _summary(result, fix, data) -> None:
    """The notes, tables and next steps of a finished export; its failures as an error (exit 1)."""
    from fer_edge.errors import ExportError, ParityError
    from fer_edge.exporters.api import INT8_NEEDS_CALIBRATION, SKIP_NEEDS_CALIBRATION

    for s in result.skipped:
        if s["code"] != SKIP_NEEDS_CALIBRATION:
            note = f"note: skipped {s['target']} {s['precision']}: {s['reason']}"
            err_console.print(f"[dim]{escape(note)}[/]", soft_wrap=True)
    no_calib = [s["target"] for s in result.skipped if s["code"] == SKIP_NEEDS_CALIBRATION]
    if no_calib:
        err_console.print(f"[yellow]note:[/] int8 not exported ({', '.join(no_calib)}): {INT8_NEEDS_CALIBRATION}",
                          highlight=False, soft_wrap=True)
    gate_line = weight_gate_line(_gate_that_applied(result), str(result.manifest_path))
    if gate_line:  # (it names the manifest: a path, no markup)
        err_console.print(gate_line, highlight=False, markup=False)
    console.print(artifacts_table(result))
    if not result.ok:
        err_console.print(failures_table(result))
    else:
        for line in next_steps(result, data):
            err_console.print(line, highlight=False, markup=False, soft_wrap=True)
    try:
        result.raise_for_failures()
    except (ExportError, ParityError) as e:
        n_exp, n_par = len(result.failed), len(result.parity_failures)
        parts = ([f"{n_exp} export(s) failed"] if n_exp else []) + (
            [f"{n_par} artifact(s) failed the parity gate"] if n_par else [])
        hint = (
            "; artifacts that failed the gate are kept and marked failed in the manifest; to accept one, "
            "override the threshold it missed (--min-agreement, --max-abs-diff, --max-kl or "
            "--max-accuracy-drop PRECISION=VALUE)" if n_par else ""
        )
        if fix != "enable" and any(a.target == "openvino" and a.precision == "int8"
                                   for a in result.parity_failures):
            from fer_edge.cpu import int8_can_saturate_here

            if int8_can_saturate_here():
                hint += ("; this CPU has no VNNI, so OpenVINO's int8 sums can saturate here: "
                         "--overflow-fix enable gives the weights 7 bits")
        raise type(e)(f"{' and '.join(parts)}; see the table above and {result.manifest_path}{hint}") from None
