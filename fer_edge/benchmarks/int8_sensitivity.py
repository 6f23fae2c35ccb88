"""Where a model's INT8 error comes from: top-1 agreement with FP32 under simulated INT8 rounding.

    python -m fer_edge.benchmarks.int8_sensitivity CHECKPOINT --calib-data fer2013.csv.gz \
        [--val-data ...] [--calib-size 500] [--json report.json]

Rounds the model as ONNX Runtime's INT8 graph does (:class:`fer_edge.training.qat.QuantSim`:
per-channel int8 weights, per-tensor uint8 activations with MinMax ranges from the calibration
images) and prints the agreement with the FP32 model on the validation split for: everything
rounded, activations only, weights only, and weights plus each activation tensor alone. A tensor
whose row is far below the weights-only row is where a float exception or more bits would pay;
rows all close together mean the error is spread over the network. The simulation's rounding is
not bit-identical to a runtime's (a scale a fraction of a percent off rounds values differently),
so read it next to the export gate's figure, not instead of it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def sensitivity(checkpoint: str | Path, calib_data: str | Path, val_data: str | Path | None = None,
                calib_size: int = 500, seed: int = 0, batch: int = 512, progress: bool | None = None,
                console=None) -> dict:
    """Agreement with FP32 for each rounding configuration (see the module docstring).

    ``progress``: a transient bar over the passes on ``console`` (default stderr); None: only on a terminal. The
    result's ``warnings`` are :func:`~fer_edge.exporters.calibration.load_calibration`'s (fewer calibration images
    than asked for, or than INT8 ranges need), for the caller to show.
    """
    import torch
    from fer_edge.console import WideConsole as Console  # wide off a terminal
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fer_edge.errors import OptionError

    if isinstance(calib_size, bool) or not isinstance(calib_size, int) or calib_size < 1:
        raise OptionError(f"--calib-size must be a whole number of at least 1 (got {calib_size!r})")

    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.exporters.calibration import load_calibration, load_validation
    from fer_edge.training.qat import QuantSim
    from fer_edge.weights import resolve_checkpoint

    ck = load_checkpoint(resolve_checkpoint(checkpoint))
    model = ck.build_model().eval()
    calib, warnings = load_calibration(calib_data, size=calib_size, seed=seed, norm=ck.normalization, progress=False)
    val = load_validation(val_data or calib_data, seed=seed, norm=ck.normalization, progress=False)
    x_cal, x_val = torch.from_numpy(calib.inputs), torch.from_numpy(val.inputs)
    sim = QuantSim(model, model, x_cal[:2])
    quantizers = [sim.input_fq, *sim.fq.values()]
    console = console or Console(stderr=True)
    show = console.is_terminal if progress is None else progress
    bar = Progress(TextColumn("[bold]INT8 sensitivity[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}"), console=console, transient=True, disable=not show)
    # passes over the validation images: FP32, everything, activations only, weights only, one per activation
    task = bar.add_task("FP32 reference", total=4 + len(sim.fq))
    with bar, torch.no_grad():
        sim(x_cal)  # the first batch sets every observer's range: MinMax over the calibration images
        for fq in quantizers:
            fq.disable_observer()

        def top1(f) -> torch.Tensor:
            out = torch.cat([f(x_val[i : i + batch]).argmax(1) for i in range(0, len(x_val), batch)])
            bar.advance(task)
            return out

        ref = top1(model)

        def agreement(what: str) -> float:
            bar.update(task, description=what)
            # from the count, in Python: a float32 mean stored 554/560 as 0.9892857074737549 in --json
            return int((top1(sim) == ref).sum()) / len(ref)

        rows = {"everything": agreement("everything")}
        weights, sim.weights = sim.weights, []
        rows["activations only"] = agreement("activations only")
        sim.weights = weights
        for fq in quantizers:
            fq.disable_fake_quant()
        rows["weights only"] = agreement("weights only")
        per_tensor = {}
        for name, fq in sim.fq.items():
            fq.enable_fake_quant()
            per_tensor[name] = agreement(f"weights + {name}")
            fq.disable_fake_quant()
    return {"checkpoint": str(checkpoint), "model": ck.model_name, "calibration_images": len(calib),
            "warnings": list(warnings), "validation": val.record, "agreement": rows, "weights_plus_one_activation": per_tensor}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fer_edge.benchmarks.int8_sensitivity",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="checkpoint file or shipped model name")
    ap.add_argument("--calib-data", required=True, help="FER2013 CSV or image folder (calibration: its training split)")
    ap.add_argument("--val-data", help="validation data (default: the calibration data's validation split)")
    ap.add_argument("--calib-size", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures here")  # a str: Path("") would hide an empty value
    args = ap.parse_args(argv)

    from fer_edge.console import WideConsole as Console  # wide off a terminal
    from rich.table import Table

    from fer_edge.errors import FerEdgeError, OptionError
    from fer_edge.utils import check_output_file, sigterm_as_interrupt, write_json_atomic

    try:
        from fer_edge.benchmarks.export_bench import empty_problems

        # every option wrong on its own, in one usage error (exit 2), before any work: an empty path or model (a
        # script's unset variable: not the current folder, nor the calibration data for --val-data), --calib-size
        problems = empty_problems(args)
        if args.calib_size < 1:
            problems.append(f"--calib-size must be a whole number of at least 1 (got {args.calib_size!r})")
        in_the_way = []  # a --json that is a folder or lies under a file: listed with them; on its own, exit 1
        if args.json is not None and str(args.json).strip():
            try:
                check_output_file(args.json, "--json", FerEdgeError)
            except FerEdgeError as e:
                in_the_way.append(str(e))
        if problems or in_the_way:
            raise (OptionError if problems else FerEdgeError)("; ".join(problems + in_the_way))
        with sigterm_as_interrupt():
            res = sensitivity(args.checkpoint, args.calib_data, args.val_data, args.calib_size, args.seed)
    except FerEdgeError as e:  # an OptionError (a value wrong on its own) is a usage error: exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, OptionError) else 1
    except KeyboardInterrupt:
        print("interrupted: nothing was measured to the end; no table was printed"
              + (f" and --json {args.json} was not written" if args.json else ""), file=sys.stderr)
        return 130
    # the JSON first: a reader that stops early (`| head`) ends the script while the table prints
    json_error = None
    if args.json:
        try:
            write_json_atomic(args.json, res)
        except OSError as e:
            json_error = f"error: --json {args.json}: {e.strerror or e}"
    for w in res["warnings"]:  # as fer-edge export warns on the same calibration data
        print(f"warning: {w}", file=sys.stderr)
    t = Table(title=f"{res['model']}: top-1 agreement with FP32 under simulated INT8 "
                    f"({res['validation'].get('count', '?')} validation images)")
    t.add_column("rounded")
    t.add_column("agreement", justify="right")
    for name, a in res["agreement"].items():
        t.add_row(name, f"{a:.2%}")
    for name, a in res["weights_plus_one_activation"].items():
        t.add_row(f"weights + {name}", f"{a:.2%}")
    Console().print(t)
    if json_error:
        print(json_error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from fer_edge.console import run_script
    from fer_edge.utils import command_environment

    command_environment()  # as the fer-edge command: ONNX Runtime's telemetry off (a user's setting wins)
    sys.exit(run_script(main))  # a closed stdout (`| head`): exit 141 quietly, as fer-edge
