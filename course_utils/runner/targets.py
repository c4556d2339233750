"""Lesson targets: what a lesson must achieve, read from its metadata and checked against what it recorded.

A lesson declares them in ``metadata.course.targets``::

    {"smoke": {"val_loss": ["<=", 2.1]},                      # [op, value]: checked on every smoke run
     "full":  {"val_loss": ["<=", 1.48, "estimate"]}}         # [op, value, source]

``source`` says where a full-mode value comes from: ``"measured"`` (a committed record in
``benchmarks/measured/<lesson>.json`` names the run that met it: value, command, commit, date, machine; see
:mod:`course_utils.runner.records`) or ``"estimate"`` (expected, no recorded run has confirmed it yet). A full target
written without a source counts as an estimate.

A quality target that a broken model could meet proves nothing, so a lesson computes the obvious baseline on the same
held-out data in the same run and targets the margin over it: the metric ``<quality>_gain_over_<baseline>`` (a
difference, higher is better: ``val_loss_gain_over_bigram = bigram_val_loss - val_loss``), ``>`` or ``>=`` a
strictly positive margin, and the lesson records the baseline's own value too (``bigram_val_loss``)::

    {"smoke": {"val_loss_gain_over_bigram": [">=", 0.1]}}
"""

from __future__ import annotations

import math
import numbers
import operator
import re
from dataclasses import dataclass

OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}
SOURCES = ("estimate", "measured")


class BadTarget(ValueError):
    """A target in a lesson's metadata that the runner cannot check."""


@dataclass(frozen=True)
class Target:
    metric: str
    op: str
    value: object
    source: str | None  # "estimate" | "measured" in full mode; None in smoke mode (every smoke run measures it)


@dataclass
class TargetResult:
    metric: str
    op: str
    value: object
    actual: object
    met: bool
    source: str | None = None
    note: str = ""  # why a target was not met when the value is missing or not a number

    @property
    def evidence(self) -> str:
        """'measured' or 'estimate' for full-mode targets, 'smoke run' for smoke ones."""
        return self.source or "smoke run"


def parse_targets(targets: dict, mode: str, lesson: str = "lesson") -> list[Target]:
    """Read one mode's targets; raises :class:`BadTarget` with one sentence for a malformed entry."""
    if not isinstance(targets, dict):
        raise BadTarget(f"{lesson}: metadata.course.targets.{mode} must be a mapping of metric -> [op, value], not {targets!r}.")
    parsed = []
    for metric, spec in targets.items():
        where = f"{lesson}: {mode} target {metric!r}"
        if not isinstance(spec, (list, tuple)) or len(spec) not in (2, 3):
            raise BadTarget(f"{where} must be [op, value]{' or [op, value, source]' if mode == 'full' else ''}, not {spec!r}.")
        op, value = spec[0], spec[1]
        if op not in OPS:
            raise BadTarget(f"{where} has unknown op {op!r}; use one of {', '.join(OPS)}.")
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
            raise BadTarget(f"{where} compares with {value!r}; a target value is a number (or a string for ==).")
        if isinstance(value, str) and op != "==":
            raise BadTarget(f"{where} compares the text {value!r} with {op}; only == works on text.")
        source = None
        if mode == "full":
            source = spec[2] if len(spec) == 3 else "estimate"
            if source not in SOURCES:
                raise BadTarget(f"{where} has source {source!r}; use 'estimate' (not confirmed by a run) or 'measured'.")
        elif len(spec) == 3:
            raise BadTarget(f"{where} has a source ({spec[2]!r}); smoke targets are [op, value] (every smoke run measures them).")
        parsed.append(Target(metric, op, value, source))
    return parsed


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real)  # bools count: True/False compare as 1/0


def check_target(target: Target, metrics: dict) -> TargetResult:
    actual = metrics.get(target.metric)
    result = TargetResult(target.metric, target.op, target.value, actual, False, target.source)
    if actual is None:
        result.note = "not recorded"
    elif isinstance(target.value, str):
        result.met = isinstance(actual, str) and actual == target.value
        if not isinstance(actual, str):
            result.note = "not text"
    elif not _is_number(actual):
        result.note = "not a number"
    elif isinstance(actual, float) and math.isnan(actual):
        result.note = "NaN"
    else:
        result.met = bool(OPS[target.op](actual, target.value))
    return result


def check_targets(targets: dict | list[Target], metrics: dict, mode: str = "smoke") -> list[TargetResult]:
    """Check targets (a metadata mapping or parsed :class:`Target` s) against recorded metrics. Never raises on a
    metric of the wrong kind: a string, a list or NaN is reported as a missed target with a note."""
    parsed = targets if isinstance(targets, list) else parse_targets(targets, mode)
    return [check_target(t, metrics) for t in parsed]


# --- targets that cannot fail ----------------------------------------------------------------------------------

#: Metric names of quantities that cannot be negative: `> 0` / `>= 0` on them is always true.
NON_NEGATIVE = re.compile(
    r"latency|_ms($|_)|_mb($|_)|_gb($|_)|_s$|_sec|seconds|time|size|count|(^|_)n_|num_|tokens|params|files|speed"
    r"|throughput|per_s|bytes|vram|rss|memory|loss|wer|cer|diff|error|steps|epochs|segments|boxes|images|chunks"
    r"|compared|length|len$|_len_|perplexity|ppl|width|height|pixels|distance|norm"
)
#: Metric names of fractions in [0, 1]: `<= 1` or `>= 0` on them is always true.
UNIT_INTERVAL = re.compile(
    r"accuracy|recall|precision|(^|_)f1|mrr|(^|_)map|exact_match|match_rate|_match$|agreement|auc|hit_rate|_rate$|fraction"
)
#: Names of differences that can go either way (a WER improvement, a gain, an R^2): `> 0` on them can fail.
SIGNED = re.compile(r"improvement|gain|delta|change|drop|(^|_)r2|corr|margin|_vs_|log_?lik|reward")
VRAM = re.compile(r"vram|peak_.*_gb|memory_gb|gpu_mem")
CARD_GB = 12.0
#: A margin over a baseline computed in the same run: ``<quality>_gain_over_<baseline>``.
GAIN_OVER = re.compile(r"^(?P<quality>\w+?)_gain_over_(?P<baseline>[a-z0-9]+(?:_[a-z0-9]+)*)$")
#: On a fraction, ``>= 1`` or ``>`` this is met only by (nearly) every case: a 0/1 flag in disguise.
ALL_OR_NOTHING = 0.99


def weak_targets(targets: dict, mode: str) -> list[str]:
    """Sentences naming each target in one mode that cannot fail (or is malformed); empty when all can fail.

    Rules (issues 10 and 20): a target must be able to come out false in its mode —
    ``>``/``>=`` 0 (or less) on a quantity that cannot be negative; ``<=``/``<`` 1 (or more) and ``>=`` 0 on a
    fraction; ``<=``/``<`` the reference card's whole memory (12 GiB or more) on a VRAM metric; ``== 1`` / ``== True``
    on a 0/1 flag (record the measurement the flag stands for: a rate, a difference, a speed-up), and its disguise,
    ``>= 1.0`` or ``> 0.99`` on a fraction; a ``<quality>_gain_over_<baseline>`` margin that is not ``>``/``>=``
    a strictly positive number (0 or less ties the baseline); and, in full mode, a target without its source
    ("estimate" or "measured"). Whether the lesson records the baseline is :func:`unrecorded_baselines`' job.
    """
    problems = []
    try:
        parsed = parse_targets(targets, mode)
    except BadTarget as err:
        return [str(err)]
    if mode == "full":
        for metric, spec in targets.items():
            if len(spec) != 3:
                problems.append(f"full target {metric!r} has no source: write [op, value, \"estimate\"] or "
                                "[op, value, \"measured\"].")
    for t in parsed:
        name = t.metric.lower()
        value = t.value
        if isinstance(value, str):
            continue
        where = f"{mode} target {t.metric!r} {t.op} {value!r}"
        bounded = not SIGNED.search(name)
        if t.op in (">", ">=") and value <= 0 and bounded and (NON_NEGATIVE.search(name) or UNIT_INTERVAL.search(name)):
            problems.append(f"{where} cannot fail: {t.metric} is never negative.")
        elif t.op in ("<", "<=") and value >= 1 and bounded and UNIT_INTERVAL.search(name) and not (t.op == "<" and value == 1):
            problems.append(f"{where} cannot fail: {t.metric} is a fraction, never above 1.")
        if t.op in ("<", "<=") and value >= CARD_GB and VRAM.search(name):
            problems.append(f"{where} cannot fail on a {CARD_GB:g} GB card: a run that needed more would have "
                            "stopped with out-of-memory; set the lesson's budget instead.")
        if t.op == "==" and (value is True or (isinstance(value, int) and value == 1)):
            problems.append(f"{where} checks a 0/1 flag the notebook sets itself; record the measurement it stands for "
                            "(a match rate, a max difference, a speed-up, a size ratio) and target that.")
        elif bounded and UNIT_INTERVAL.search(name) and (
                (t.op == ">=" and value >= 1) or (t.op == ">" and value >= ALL_OR_NOTHING)):
            problems.append(f"{where} is a 0/1 flag in disguise: only a (nearly) perfect {t.metric} meets it. If the lesson "
                            "asserts it, drop the target; otherwise target the measurement with room (a max difference, "
                            "a rate that may miss a few).")
        gain = GAIN_OVER.match(name)
        if gain:
            if t.op not in (">", ">="):
                problems.append(f"{where}: a gain over the {gain['baseline']} baseline is higher when better; "
                                "target it with > or >= a positive margin.")
            elif value <= 0:
                problems.append(f"{where} ties the baseline: a model no better than {gain['baseline']} meets it; "
                                "target a strictly positive margin.")
    return problems


def recorded_names(source: str) -> set[str]:
    """The metric names a code cell records: the keywords of its ``record(...)`` calls and, where one records
    ``**mapping``, the keywords of the cell's ``dict(...)`` and ``.update(...)`` calls that build it."""
    import ast

    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]  # IPython magics
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return set()
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]

    def name_of(call: ast.Call) -> str:
        func = call.func
        return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""

    records = [call for call in calls if name_of(call) == "record"]
    names = {kw.arg for call in records for kw in call.keywords if kw.arg}
    if any(kw.arg is None for call in records for kw in call.keywords):  # record(**results)
        names |= {kw.arg for call in calls if name_of(call) in ("dict", "update") for kw in call.keywords if kw.arg}
    return names


def unrecorded_baselines(targets: dict, recorded: set[str]) -> list[str]:
    """Sentences naming each ``<quality>_gain_over_<baseline>`` target whose baseline the lesson does not record.

    ``targets`` maps metric names to specs (one mode's targets, or both merged); ``recorded`` is every name the
    lesson records (:func:`recorded_names` over its code cells). The baseline counts as recorded when a recorded name
    that is not itself a margin contains its name as whole words (``bigram`` in ``bigram_val_loss``, ``zone_rate`` in
    ``zone_rate_auc``)."""
    problems = []
    for metric in targets:
        gain = GAIN_OVER.match(metric.lower())
        if not gain:
            continue
        word = re.compile(rf"(^|_){re.escape(gain['baseline'])}(_|$)")
        if not any(word.search(name.lower()) for name in recorded if not GAIN_OVER.match(name.lower())):
            problems.append(f"target {metric!r} is a margin over the {gain['baseline']} baseline, but the lesson records "
                            f"no {gain['baseline']} value: record the baseline's own score too "
                            f"(e.g. {gain['baseline']}_{gain['quality']}).")
    return problems


def asserted_exactly(sources: list[str]) -> dict[str, str]:
    """Metric names the lesson both asserts to an exact value and records: ``{metric: "the assert"}``.

    A cell that says ``assert rate == 1.0, ...`` (or ``== 0``, ``is True``) and a ``record(metric=rate)`` elsewhere:
    a target on that metric can only ever see the one value the assert allows, so it repeats the check instead of
    measuring (keep the assert, drop the target). ``sources`` are the lesson's code cells."""
    import ast

    exact: dict[str, str] = {}
    records: dict[str, str] = {}
    for source in sources:
        lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assert):
                tests = node.test.values if isinstance(node.test, ast.BoolOp) and isinstance(node.test.op, ast.And) \
                    else [node.test]
                for test in tests:
                    if (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Eq, ast.Is))
                            and isinstance(test.comparators[0], ast.Constant) and isinstance(test.left, ast.Name)
                            and isinstance(test.comparators[0].value, (bool, int, float))):
                        exact[test.left.id] = ast.unparse(test)
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
                if name == "record":
                    for kw in node.keywords:
                        value = kw.value.args[0] if (isinstance(kw.value, ast.Call) and ast.unparse(kw.value.func)
                                                     in ("round", "float", "int") and kw.value.args) else kw.value
                        if kw.arg and isinstance(value, ast.Name):
                            records[kw.arg] = value.id
    return {metric: exact[var] for metric, var in records.items() if var in exact}


def repeated_asserts(targets: dict, sources: list[str]) -> list[str]:
    """Sentences naming each target on a metric the lesson already asserts to one exact value."""
    exact = asserted_exactly(sources)
    return [f"target {metric!r} repeats the lesson's `assert {exact[metric]}`: it can only see that one value; keep "
            "the assert (a check) and drop the target." for metric in targets if metric in exact]


def literal_records(source: str) -> list[str]:
    """``cu.record(name=<literal>)`` calls in a code cell's source: a recorded constant proves nothing."""
    import ast

    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]  # IPython magics
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name != "record":
            continue
        for keyword in node.keywords:
            value = keyword.value
            if isinstance(value, ast.UnaryOp) and isinstance(value.op, (ast.USub, ast.UAdd)):
                value = value.operand
            if isinstance(value, ast.Constant) and isinstance(value.value, (bool, int, float)):
                found.append(f"record({keyword.arg}={ast.unparse(keyword.value)})")
    return found
