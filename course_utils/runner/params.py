"""The lesson's parameters cell, read without running it, and ``-p NAME VALUE`` overrides checked against it.

The parameters cell (tagged ``parameters``) holds the full-mode recipe, one knob a line, and one ``if SMOKE:``
block that overrides what smoke mode changes. A ``-p`` override must name a knob of that cell, have the type of its
value there (an int is fine where a float is; ``None`` there accepts anything) and, for sizes and counts, be
positive. Anything else stops the run before a lesson starts, with one sentence naming the parameter.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from course_utils.core.errors import BadParameter

_UNKNOWN = object()  # a value that is not a literal (e.g. ``os.environ.get(...)``): any type is accepted

#: Knobs that count or size something: must be > 0. WARMUP_* / WORKERS / OVERLAP may be 0 (checked >= 0 below).
_POSITIVE = re.compile(
    r"BATCH|STEPS|EPOCHS|ITERS|SIZE|LEN|ACCUM|RANK|(^|_)N_|NUM_|TOKENS|FOLDS|REPEATS|IMAGES|CLIPS|IMGSZ|WIDTH"
    r"|LEARNING_RATE|(^|_)LR($|_)|TOP_K|CHARS|CANDIDATES|INTERVAL|POINTS|_ITER|LIMIT|_GB($|_)"
)
_NON_NEGATIVE = re.compile(r"WARMUP|WORKERS|OVERLAP|DROPOUT|DECAY|SMOOTHING|SEED|INTERRUPT")


@dataclass
class Parameter:
    name: str
    values: list = field(default_factory=list)  # every literal value assigned (full recipe, smoke override)

    @property
    def default(self) -> object:
        return self.values[0] if self.values else _UNKNOWN

    def describe(self) -> str:
        literal = [v for v in self.values if v is not _UNKNOWN]
        return f"{self.name}={literal[0]!r}" if literal else self.name


def parameters_cell(notebook: dict) -> str | None:
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            source = cell.get("source", "")
            return "".join(source) if isinstance(source, list) else source
    return None


def _literal(node: ast.AST) -> list:
    if isinstance(node, ast.IfExp):  # old style `X if SMOKE else Y`: both branches are possible values
        return _literal(node.body) + _literal(node.orelse)
    try:
        return [ast.literal_eval(node)]
    except (ValueError, SyntaxError, TypeError):
        return [_UNKNOWN]


def _assign(params: dict[str, Parameter], target: ast.AST, value: ast.AST) -> None:
    if isinstance(target, ast.Name):
        params.setdefault(target.id, Parameter(target.id)).values.extend(_literal(value))
    elif isinstance(target, (ast.Tuple, ast.List)):
        values = value.elts if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts) else None
        if values is None and isinstance(value, ast.IfExp):  # `A, B = (1, 2) if SMOKE else (3, 4)`
            branches = [b for b in (value.body, value.orelse) if isinstance(b, (ast.Tuple, ast.List))]
            for branch in branches:
                if len(branch.elts) == len(target.elts):
                    for t, v in zip(target.elts, branch.elts):
                        _assign(params, t, v)
            if branches:
                return
        for i, t in enumerate(target.elts):
            _assign(params, t, values[i] if values else ast.Name("_"))  # not a literal: any value


def _walk(body: list[ast.stmt], params: dict[str, Parameter]) -> None:
    for stmt in body:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                _assign(params, target, stmt.value)
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            _assign(params, stmt.target, stmt.value)
        elif isinstance(stmt, ast.If):  # the `if SMOKE:` overrides
            _walk(stmt.body, params)
            _walk(stmt.orelse, params)


def lesson_parameters(path: str | Path) -> dict[str, Parameter]:
    """Name -> :class:`Parameter` for every variable the lesson's parameters cell assigns (empty if it has none)."""
    notebook = json.loads(Path(path).read_text())
    source = parameters_cell(notebook)
    if source is None:
        return {}
    params: dict[str, Parameter] = {}
    _walk(ast.parse(source).body, params)
    return params


def parse_value(text: str) -> object:
    """A command-line value as Python: ``5`` -> 5, ``True`` -> True, ``[1, 2]`` -> list, anything else -> the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _type_name(value: object) -> str:
    return {bool: "True/False", int: "a whole number", float: "a number", str: "text", list: "a list",
            tuple: "a tuple", dict: "a mapping"}.get(type(value), type(value).__name__)


def _accepts(default: object, value: object) -> bool:
    if default is None or default is _UNKNOWN:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def coerce(param: Parameter, text: str) -> object:
    """Turn ``text`` into a value the lesson can use for ``param``, or raise :class:`BadParameter` (one sentence)."""
    value = parse_value(text) if isinstance(text, str) else text
    literal = [v for v in param.values if v is not _UNKNOWN]
    if literal and all(isinstance(v, str) for v in literal if v is not None) and any(isinstance(v, str) for v in literal):
        # a text knob (a model id, a revision, a path): keep what was typed, even if it looks like a number
        if not isinstance(value, str) and value is not None:
            value = text
    if param.values and not any(_accepts(d, value) for d in param.values):
        wanted = " or ".join(sorted({_type_name(d) for d in param.values if d is not _UNKNOWN}))
        raise BadParameter(f"Parameter {param.name} takes {wanted} (the lesson sets {param.describe()}), not {text!r}.")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if _NON_NEGATIVE.search(param.name):
            if value < 0:
                raise BadParameter(f"Parameter {param.name} must be 0 or more, not {text!r}.")
        elif _POSITIVE.search(param.name) and value <= 0:
            raise BadParameter(f"Parameter {param.name} is a size or a count and must be greater than 0, not {text!r}.")
    return value


def check_overrides(path: str | Path, overrides: list[tuple[str, str]] | dict) -> dict[str, object]:
    """Validate ``-p`` overrides for one lesson; returns name -> value. Raises :class:`BadParameter`."""
    lesson = Path(path).stem
    items = list(overrides.items()) if isinstance(overrides, dict) else list(overrides)
    if not items:
        return {}
    params = lesson_parameters(path)
    if not params:
        raise BadParameter(f"Lesson {lesson} has no parameters cell (a code cell tagged 'parameters'), so -p cannot set {items[0][0]}.")
    values = {}
    for name, text in items:
        if name == "SMOKE":
            raise BadParameter("Parameter SMOKE is set by the runner's --mode (smoke or full), not by -p.")
        if name not in params:
            known = ", ".join(p.describe() for n, p in params.items() if n != "SMOKE")
            raise BadParameter(f"Lesson {lesson} has no parameter {name}; its parameters are: {known}.")
        values[name] = coerce(params[name], text)
    return values
