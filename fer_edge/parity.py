"""The parity gate: compare an artifact's logits with the PyTorch FP32 reference.

Shared by ``fer-edge export`` (validation of every artifact) and ``fer-edge bench``::

    from fer_edge.parity import compare, check, default_thresholds

    stats = compare(ref_logits, logits, labels)          # ParityStats
    problems = check(stats, "int8")                      # [] when within the defaults
    problems = check(stats, "int8", {"int8": Thresholds(min_agreement=0.97)})

Metrics (all on the same N inputs):

* ``agreement``: fraction of inputs whose top-1 class equals the reference's;
* ``max_abs_diff``: the largest absolute logit difference;
* ``kl``: mean KL(softmax(ref) || softmax(artifact)) in nats;
* ``flips``: number of inputs whose top-1 class changed;
* ``accuracy`` / ``ref_accuracy``: top-1 accuracy of the artifact / reference against
  ``labels`` (``None`` without labels).

An input whose artifact or reference logits are not all finite counts as a flip (and as wrong for that side's
accuracy); ``max_abs_diff`` is then infinite, and so is ``kl`` when a reference row is not finite.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping

import numpy as np

from fer_edge.errors import FerEdgeError, OptionError
from fer_edge.targets import Precision


@dataclass(frozen=True)
class ParityStats:
    agreement: float
    max_abs_diff: float
    kl: float
    flips: int
    n: int
    accuracy: float | None = None
    ref_accuracy: float | None = None

    @property
    def accuracy_drop(self) -> float | None:
        """Reference accuracy minus artifact accuracy (a fraction; positive = worse)."""
        if self.accuracy is None or self.ref_accuracy is None:
            return None
        return self.ref_accuracy - self.accuracy

    def to_dict(self) -> dict:
        d = asdict(self)
        d["accuracy_drop"] = self.accuracy_drop
        return d


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def compare(ref_logits, logits, labels=None) -> ParityStats:
    """Parity statistics of ``logits`` against ``ref_logits`` (both N x C), optionally with true labels."""
    ref = np.asarray(ref_logits, dtype=np.float64)
    out = np.asarray(logits, dtype=np.float64)
    if ref.ndim != 2 or ref.shape != out.shape:
        raise FerEdgeError(f"cannot compare logits of shapes {ref.shape} and {out.shape}")
    n = ref.shape[0]
    if n == 0:
        raise FerEdgeError("cannot compare empty logits")
    # NaN/inf logits: report the worst case rather than propagating NaN comparisons. A row whose reference is not
    # finite never agrees (its argmax is meaningless: an all-NaN row's is 0, which a constant artifact matches)
    ref_bad = ~np.all(np.isfinite(ref), axis=1)
    out_bad = ~np.all(np.isfinite(out), axis=1)
    bad = out_bad | ref_bad
    ref = np.where(np.isfinite(ref), ref, 0.0)
    out = np.where(np.isfinite(out), out, 0.0)
    ref_top = ref.argmax(axis=1)
    top = out.argmax(axis=1)
    same = (ref_top == top) & ~bad
    lp_ref = _log_softmax(ref)
    lp = _log_softmax(out)
    kl = float(np.inf) if ref_bad.any() else float(np.mean(np.sum(np.exp(lp_ref) * (lp_ref - lp), axis=1)))
    max_diff = float(np.inf) if bad.any() else float(np.max(np.abs(ref - out)))
    acc = ref_acc = None
    if labels is not None:
        y = np.asarray(labels).reshape(-1)
        if y.shape[0] != n:
            raise FerEdgeError(f"{y.shape[0]} labels for {n} logits")
        from fer_edge.metrics import check_scorable

        check_scorable(y, [str(i) for i in range(ref.shape[1])])
        acc = float(np.mean((top == y) & ~out_bad))
        ref_acc = float(np.mean((ref_top == y) & ~ref_bad))
    return ParityStats(
        agreement=float(np.mean(same)),
        max_abs_diff=max_diff,
        kl=kl,
        flips=int(n - same.sum()),
        n=int(n),
        accuracy=acc,
        ref_accuracy=ref_acc,
    )


#: The valid range of each threshold, both ends included (fractions for agreement and accuracy drop).
THRESHOLD_RANGES: dict[str, tuple[float, float]] = {
    "min_agreement": (0.0, 1.0),
    "max_abs_diff": (0.0, math.inf),
    "max_kl": (0.0, math.inf),
    "max_accuracy_drop": (0.0, 1.0),
}


def _value_problem(where: str, name: str, value) -> str | None:
    """What is wrong with ``value`` as threshold ``name`` (None: a number in range, or None = check disabled)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"{where}: expected a number or null, got {value!r}"
    v = float(value)
    if not math.isfinite(v):
        return f"{where}: {value!r} is not a finite number"
    lo, hi = THRESHOLD_RANGES[name]
    if not lo <= v <= hi:
        valid = f">= {lo:g}" if hi == math.inf else f"between {lo:g} and {hi:g}"
        return f"{where}: {value!r} is out of range (must be {valid})"
    return None


@dataclass(frozen=True)
class Thresholds:
    """Limits for one precision; ``None`` disables a check.

    min_agreement: top-1 agreement with the reference (fraction, 0..1).
    max_abs_diff: largest absolute logit difference.
    max_kl: mean KL divergence of the softmax (nats).
    max_accuracy_drop: reference accuracy minus artifact accuracy (fraction: 0.01 = 1 point);
    checked only when labels were given.
    """

    min_agreement: float | None = None
    max_abs_diff: float | None = None
    max_kl: float | None = None
    max_accuracy_drop: float | None = None

    def __post_init__(self) -> None:
        # a NaN or out-of-range limit would pass or fail every artifact silently: refuse it where it is made
        problems = [p for f in fields(self) if (p := _value_problem(f.name, f.name, getattr(self, f.name)))]
        if problems:
            raise FerEdgeError("invalid parity thresholds: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


#: The defaults of the export gate.
DEFAULT_THRESHOLDS: dict[Precision, Thresholds] = {
    Precision.fp32: Thresholds(min_agreement=1.0, max_abs_diff=1e-3),
    Precision.fp16: Thresholds(min_agreement=0.995),
    Precision.int8: Thresholds(min_agreement=0.985, max_accuracy_drop=0.01),
}

#: Option names accepted by :func:`parse_overrides`, one per :class:`Thresholds` field.
THRESHOLD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Thresholds))


def _precision_name(key) -> str:
    return key.value if isinstance(key, Precision) else str(key)


def threshold_problems(table, *, objects_ok: bool = True) -> list[str]:
    """Every problem of a threshold table, all at once ([] = valid).

    ``table``: ``{precision: {threshold: value}}`` (a weight's gate, a caller's table), where a value
    may also be a :class:`Thresholds` when ``objects_ok``; or, when ``objects_ok``, one
    :class:`Thresholds` for every precision. Refused: unknown precisions and threshold names, values
    that are not a number or None, NaN/inf, and values outside :data:`THRESHOLD_RANGES`
    (agreement and accuracy drop in [0, 1], the others >= 0). The single check behind
    ``python -m fer_edge.weights.ship``/``gate``, :func:`with_overrides` and :func:`resolve_gate`
    (so ``fer-edge export`` and ``fer-edge bench``).
    """
    if table is None:
        return []
    if objects_ok and isinstance(table, Thresholds):
        return []  # validated when it was made
    if not isinstance(table, Mapping):
        shape = "{precision: Thresholds or {threshold: value}} or a Thresholds" if objects_ok else \
            "{precision: {threshold: value}}"
        return [f"expected {shape}, got {table!r}"]
    valid_p = [p.value for p in Precision]
    problems: list[str] = []
    for key, limits in table.items():
        prec = _precision_name(key)
        if prec not in valid_p:
            problems.append(f"unknown precision {key!r} (valid: {', '.join(valid_p)})")
            continue
        if objects_ok and isinstance(limits, Thresholds):
            continue
        if not isinstance(limits, Mapping):
            also = " or a Thresholds" if objects_ok else ""
            problems.append(f"{prec}: expected {{threshold: value}}{also}, got {limits!r}")
            continue
        for name, value in limits.items():
            if name not in THRESHOLD_FIELDS:
                problems.append(f"{prec}: unknown threshold {name!r} (valid: {', '.join(THRESHOLD_FIELDS)})")
            elif (p := _value_problem(f"{prec}.{name}", name, value)) is not None:
                problems.append(p)
    return problems


def _overrides_as_table(overrides) -> tuple[dict, list[str]]:
    """``{threshold: {precision: value}}`` turned into ``{precision: {threshold: value}}``, with its shape problems."""
    if overrides is None:
        return {}, []
    if not isinstance(overrides, Mapping):
        return {}, [f"expected {{threshold: {{precision: value}}}}, got {overrides!r}"]
    table: dict[str, dict] = {}
    problems: list[str] = []
    for name, per_precision in overrides.items():
        if name not in THRESHOLD_FIELDS:
            problems.append(f"unknown threshold {name!r} (valid: {', '.join(THRESHOLD_FIELDS)})")
        elif not isinstance(per_precision, Mapping):
            problems.append(f"{name}: expected {{precision: value}}, got {per_precision!r}")
        else:
            for prec, value in per_precision.items():
                table.setdefault(_precision_name(prec), {})[name] = value
    return table, problems


def overrides_problems(overrides) -> list[str]:
    """:func:`threshold_problems` for overrides shaped ``{threshold: {precision: value}}`` (``--min-agreement`` etc.)."""
    table, problems = _overrides_as_table(overrides)
    return problems + threshold_problems(table, objects_ok=False)


def validate_thresholds(table=None, *, overrides=None, what: str = "parity thresholds") -> None:
    """Raise one :class:`FerEdgeError` listing every problem of ``table`` and ``overrides`` (see :func:`threshold_problems`)."""
    problems = threshold_problems(table) + overrides_problems(overrides)
    if problems:
        raise FerEdgeError(f"invalid {what}: " + "; ".join(problems))


def _as_thresholds(limits) -> Thresholds:
    """A validated table entry as a Thresholds (a ``{threshold: value}`` dict sets those, the rest disabled)."""
    if isinstance(limits, Thresholds):
        return limits
    return Thresholds(**{k: None if v is None else float(v) for k, v in limits.items()})


def _as_table(thresholds) -> dict[Precision, Thresholds]:
    """A validated ``{precision: Thresholds | {threshold: value}}`` table keyed by Precision, values Thresholds."""
    return {Precision(_precision_name(k)): _as_thresholds(v) for k, v in thresholds.items()}


def default_thresholds() -> dict[Precision, Thresholds]:
    return dict(DEFAULT_THRESHOLDS)


def resolve_thresholds(
    thresholds: Mapping[Precision | str, Thresholds] | Thresholds | None, precision: Precision | str
) -> Thresholds:
    """The thresholds for one precision: a Thresholds as is, or looked up in a table (defaults fill gaps)."""
    p = Precision(precision)
    if isinstance(thresholds, Thresholds):
        return thresholds
    validate_thresholds(thresholds)
    return _as_table(thresholds or {}).get(p, DEFAULT_THRESHOLDS[p])


def with_overrides(
    overrides: Mapping[str, Mapping[Precision | str, float | None]] | None,
    base: Mapping[Precision | str, Thresholds] | None = None,
) -> dict[Precision, Thresholds]:
    """A threshold table with ``{field: {precision: value}}`` applied over ``base`` (default: the defaults).

    Both are checked first (:func:`threshold_problems`): one error lists every problem.
    """
    if base is not None and not isinstance(base, Mapping):
        raise FerEdgeError(f"invalid base thresholds: expected {{precision: Thresholds}}, got {base!r}")
    validate_thresholds(base, overrides=overrides, what="threshold overrides" if base is None else "parity thresholds")
    table = _as_table(base or DEFAULT_THRESHOLDS)
    for p in Precision:
        table.setdefault(p, DEFAULT_THRESHOLDS[p])
    for field_name, per_precision in (overrides or {}).items():
        for prec, value in per_precision.items():
            p = Precision(_precision_name(prec))
            table[p] = replace(table[p], **{field_name: None if value is None else float(value)})
    return table


def resolve_gate(
    source_sha256: str,
    thresholds: Mapping[Precision | str, Thresholds] | Thresholds | None = None,
    overrides: Mapping[str, Mapping[Precision | str, float | None]] | None = None,
) -> tuple[Mapping[Precision | str, Thresholds] | Thresholds, dict]:
    """The gate for artifacts of the checkpoint with this SHA-256, and a record of where it came from.

    ``thresholds`` (a whole table) is used as given. Otherwise: the defaults, then the shipped
    weight's own gate if the checkpoint is a shipped weight (``WeightMeta.parity_gate``), then
    ``overrides`` (``{threshold: {precision: value}}``, as ``--min-agreement`` etc. give).
    """
    if thresholds is not None:
        if overrides:
            raise FerEdgeError("pass either thresholds (a whole table) or threshold overrides, not both")
        validate_thresholds(thresholds)
        table = thresholds if isinstance(thresholds, Thresholds) else _as_table(thresholds)
        return table, {"defaults": False, "weight": None, "overrides": None, "caller_table": True}
    validate_thresholds(overrides=overrides, what="threshold overrides")
    from fer_edge.weights import shipped_with_sha

    meta = shipped_with_sha(source_sha256)
    base: Mapping[Precision, Thresholds] = DEFAULT_THRESHOLDS
    weight = None
    if meta is not None and meta.parity_gate:
        problems = threshold_problems(meta.parity_gate, objects_ok=False)
        if problems:
            raise FerEdgeError(f"invalid parity gate of shipped weight {meta.name!r} (weights.json): "
                               + "; ".join(problems))
        base = with_overrides(meta.gate_overrides())
        weight = {"name": meta.name, "gate": meta.parity_gate, "reason": meta.parity_gate_reason}
    record = {
        "defaults": weight is None and not overrides,
        "weight": weight,
        "overrides": {f: {Precision(p).value: v for p, v in per.items()} for f, per in (overrides or {}).items()}
        or None,
        "caller_table": False,
    }
    return with_overrides(overrides or None, base), record


def parse_overrides(options: dict[str, list[str] | str | None]) -> dict[str, dict[Precision, float | None]]:
    """:func:`parse_override` for each threshold option (``{"min_agreement": ["int8=0.97"], ...}``), every
    problem of every option in one error; options given nothing are left out."""
    parsed, problems = {}, []
    for name, values in options.items():
        if not values:
            continue
        try:
            parsed[name] = parse_override(values, "--" + name.replace("_", "-"), name)
        except FerEdgeError as e:
            problems.append(str(e))
    if problems:
        raise OptionError("; ".join(problems) if len(problems) == 1 else "\n".join(problems))
    return parsed


def parse_override(values: list[str] | str | None, option: str,
                   threshold: str | None = None) -> dict[Precision, float | None]:
    """Parse ``["int8=0.97", "fp16=0.99,fp32=1"]`` into ``{Precision.int8: 0.97, ...}``.

    ``none`` (or ``off``) as the value disables that check. Unknown precisions, unparsable numbers and
    (with ``threshold``, the name the option sets) values outside :data:`THRESHOLD_RANGES` are refused,
    every problem of the option in one error that names the option and the item as typed.
    """
    if values is None:
        return {}
    items = [values] if isinstance(values, str) else list(values)
    valid = [p.value for p in Precision]
    out: dict[Precision, float | None] = {}
    problems: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                problems.append(f"expected PRECISION=VALUE (e.g. int8=0.97), got {part!r}")
                continue
            key, _, val = part.partition("=")
            key, val = key.strip().lower(), val.strip()
            if key not in valid:
                problems.append(f"unknown precision {key!r} in {part!r} (valid: {', '.join(valid)})")
                continue
            if Precision(key) in out:
                problems.append(f"{key} is given twice (in {part!r}); give each precision once")
                continue
            if val.lower() in ("none", "off"):
                out[Precision(key)] = None
                continue
            try:
                num = float(val)
            except ValueError:
                problems.append(f"{val!r} is not a number (in {part!r})")
                continue
            lo, hi = THRESHOLD_RANGES.get(threshold, (0.0, math.inf))
            if not np.isfinite(num) or not lo <= num <= hi:
                valid_range = "a finite non-negative number" if hi == math.inf else f"between {lo:g} and {hi:g}"
                problems.append(f"{part!r} must be {valid_range}")
                continue
            out[Precision(key)] = num
    if problems:
        raise FerEdgeError(f"{option}: " + "; ".join(problems))
    return out


def check(
    stats: ParityStats,
    precision: Precision | str,
    thresholds: Mapping[Precision | str, Thresholds] | Thresholds | None = None,
) -> list[str]:
    """Every threshold ``stats`` breaks, as human-readable reasons ([] = passed)."""
    t = resolve_thresholds(thresholds, precision)
    reasons: list[str] = []
    if t.min_agreement is not None and not stats.agreement >= t.min_agreement:
        reasons.append(
            f"top-1 agreement {stats.agreement:.2%} < {t.min_agreement:.2%} ({stats.flips} of {stats.n} flipped)"
        )
    # every limit is inclusive ("at most", as max_kl's and max_accuracy_drop's): a limit of 0 is passed by a
    # bit-identical artifact, not failed by every one
    if t.max_abs_diff is not None and not stats.max_abs_diff <= t.max_abs_diff:
        reasons.append(f"max |logit diff| {stats.max_abs_diff:.3g} > {t.max_abs_diff:.3g}")
    if t.max_kl is not None and not stats.kl <= t.max_kl:
        reasons.append(f"mean KL {stats.kl:.3g} > {t.max_kl:.3g}")
    drop = stats.accuracy_drop
    if t.max_accuracy_drop is not None and drop is not None and not drop <= t.max_accuracy_drop + 1e-12:
        reasons.append(
            f"accuracy {stats.accuracy:.2%} is {drop * 100:.2f} points below the reference's "
            f"{stats.ref_accuracy:.2%} (max drop {t.max_accuracy_drop * 100:.2f})"
        )
    return reasons


__all__ = [
    "ParityStats",
    "Thresholds",
    "DEFAULT_THRESHOLDS",
    "THRESHOLD_FIELDS",
    "compare",
    "check",
    "default_thresholds",
    "resolve_thresholds",
    "resolve_gate",
    "with_overrides",
    "parse_override",
    "THRESHOLD_RANGES",
    "threshold_problems",
    "overrides_problems",
    "validate_thresholds",
]
