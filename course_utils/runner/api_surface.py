"""The API surface the lessons and recipes use, checked against the installed libraries (issue 24, library drift).

    python -m course_utils.runner.api_surface            # check; one line per problem, exit 1 if any
    python -m course_utils.runner.api_surface --list     # every call it checks, with its keywords
    python -m course_utils.runner.api_surface --update   # rewrite api_surface.json for the installed versions

Every call that a lesson's code cell or a recipe makes to a function or class of a third-party library (any module
an installed distribution provides: transformers, peft, trl, torch, sklearn...) is found by reading the code (``ast``),
its name resolved through the imports before it (a lesson's cells share one namespace, so an import in cell 3 names
the calls of cell 7): ``from transformers import TrainingArguments`` then ``TrainingArguments(eval_strategy=...)`` is
``transformers.TrainingArguments`` with the keyword ``eval_strategy``. Each callable must exist in the installed
version, and accept each keyword by name (:func:`inspect.signature`; a dataclass's signature is its fields). A callee
that takes ``**kwargs`` accepts any keyword and is counted apart, as is one whose signature Python cannot read (some C
functions). Calls on objects (``model.generate(...)``) have no static name and are not checked.

What a callable accepts depends only on its library's version, so the answers are kept in ``api_surface.json`` beside
this module, each with the distribution and version it was read from: the test reads them instead of importing some
forty libraries (a minute or more on two busy cores). An answer whose version is not the installed one, or a callable
the file does not list yet, is asked of the imported library (slower, never wrong); ``--update`` rewrites the file
for what is installed.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from course_utils.core.paths import REPO_ROOT

#: What each callable accepts, per library version (``--update`` rewrites it; see the module's docstring).
SNAPSHOT = Path(__file__).with_name("api_surface.json")
_MAGIC = re.compile(r"^\s*[%!]")


@dataclass
class Call:
    """One library call: where (``notebooks/06_x.ipynb cell 1a2b3c4d line 5``), what, with which keywords."""

    where: str
    name: str  # the dotted name it resolves to, e.g. transformers.TrainingArguments
    keywords: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.name}({', '.join(k + '=...' for k in self.keywords)})"


@lru_cache(maxsize=1)
def _providers() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def _third_party() -> frozenset[str]:
    """Top-level module names that an installed distribution provides (not the course's own package, not stdlib)."""
    mods = {m for m in _providers() if m.isidentifier()}
    return frozenset(mods - set(sys.stdlib_module_names) - {"course_utils"})


def _distribution(module: str) -> str:
    dists = _providers().get(module.split(".")[0], [])
    return dists[0] if dists else module.split(".")[0]


def _sources(root: Path = REPO_ROOT) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(file, [(place, code), ...])]: each lesson with its code cells in order (one namespace), each recipe whole."""
    out = []
    for nb in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        out.append((str(nb.relative_to(root)), [(f"cell {c.get('id', i)}", "".join(c["source"]))
                                                for i, c in enumerate(cells) if c["cell_type"] == "code"]))
    for py in sorted((root / "recipes").glob("*.py")):
        out.append((str(py.relative_to(root)), [("", py.read_text())]))
    return out


def _dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def extract(root: Path = REPO_ROOT) -> tuple[list[Call], list[str]]:
    """Every library call of the lessons and recipes, and the sources that could not be read (one sentence each)."""
    third_party = _third_party()
    calls, problems = [], []
    for file, parts in _sources(root):
        aliases: dict[str, str] = {}  # a lesson's cells share them, in order
        for place, code in parts:
            text = "\n".join("" if _MAGIC.match(line) else line for line in code.splitlines())
            try:
                tree = ast.parse(text)
            except SyntaxError as err:
                problems.append(f"{file} {place}: not valid Python at line {err.lineno} ({err.msg}); its calls are "
                                "not checked")
                continue
            found, local = [], set()  # local: names the source defines or assigns (they shadow an import)
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    found.append(node)
                elif isinstance(node, ast.Name):
                    if isinstance(node.ctx, ast.Store):
                        local.add(node.id)
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    local.add(node.name)
                elif isinstance(node, ast.arg):
                    local.add(node.arg)
                elif isinstance(node, ast.Import):
                    for a in node.names:
                        if a.name.split(".")[0] in third_party:
                            aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    if node.module.split(".")[0] in third_party:
                        for a in node.names:
                            if a.name != "*":
                                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            visible = {k: v for k, v in aliases.items() if k not in local}
            for node in found:
                dotted = _dotted(node.func)
                if not dotted or dotted[0] not in visible:
                    continue
                where = f"{file}{' ' + place if place else ''} line {node.lineno}"
                calls.append(Call(where, ".".join([visible[dotted[0]], *dotted[1:]]),
                                  [k.arg for k in node.keywords if k.arg is not None]))
    return calls, problems


def _resolve(name: str):
    """The object a dotted name reaches (importing submodules as needed), or None where it does not exist."""
    parts = name.split(".")
    try:
        obj = importlib.import_module(parts[0])
    except Exception:  # noqa: BLE001 (a library that does not import here: the callable does not exist for us)
        return None
    for i, part in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, part)
            continue
        except AttributeError:
            pass
        except Exception:  # noqa: BLE001 (a lazy module whose import fails)
            return None
        try:
            obj = importlib.import_module(".".join(parts[: i + 1]))
        except Exception:  # noqa: BLE001
            return None
    return obj


def describe(name: str) -> dict:
    """What a callable accepts: ``{"kind": "missing"|"any"|"unknown"|"params", "params": [...]}``."""
    obj = _resolve(name)
    if obj is None:
        return {"kind": "missing"}
    if isinstance(obj, type) and dataclasses.is_dataclass(obj):
        fields = [f.name for f in dataclasses.fields(obj) if f.init]
    else:
        fields = None
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return {"kind": "unknown"} if fields is None else {"kind": "params", "params": fields}
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return {"kind": "any"}
    names = [p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return {"kind": "params", "params": sorted(set(names) | set(fields or []))}


@lru_cache(maxsize=None)
def installed_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def facts(names: set[str], snapshot: Path = SNAPSHOT, update: bool = False) -> tuple[dict[str, dict], int]:
    """:func:`describe` for each name, read from ``snapshot`` where it was taken at the installed version of the
    name's distribution, else asked of the library (imported); with ``update``, ``snapshot`` is rewritten with these
    names. Returns the answers and how many had to be asked live."""
    try:
        known = json.loads(snapshot.read_text()) if snapshot.exists() else {}
    except ValueError:
        known = {}
    out, live = {}, 0
    for name in sorted(names):
        dist = _distribution(name)
        version = installed_version(dist)
        entry = known.get(name)
        if not entry or entry.get("dist") != dist or entry.get("version") != version:
            entry, live = {**describe(name), "dist": dist, "version": version}, live + 1
        out[name] = entry
    if update:
        tmp = snapshot.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
        tmp.replace(snapshot)
    return out, live


@dataclass
class Report:
    calls: int = 0
    keywords: int = 0  # keywords checked against a signature by name
    open_keywords: int = 0  # keywords passed to a callee that takes **kwargs
    unknown: int = 0  # calls whose callee's signature Python cannot read
    callables: int = 0
    live: int = 0  # callables asked of the imported library, not read from the snapshot
    problems: list[str] = field(default_factory=list)


def check(root: Path = REPO_ROOT, snapshot: Path = SNAPSHOT, update: bool = False) -> Report:
    """Every library call of the lessons and recipes under ``root`` against the installed versions."""
    calls, problems = extract(root)
    known, live = facts({c.name for c in calls}, snapshot, update)
    report = Report(calls=len(calls), callables=len(known), live=live, problems=list(problems))
    for call in calls:
        fact = known[call.name]
        where_from = f"{fact['dist']} {fact['version'] or '(not installed)'}"
        if fact["kind"] == "missing":
            report.problems.append(f"{call.where}: {call} — {call.name} does not exist in {where_from}")
        elif fact["kind"] == "any":
            report.open_keywords += len(call.keywords)
        elif fact["kind"] == "unknown":
            report.unknown += 1
        else:
            for kw in call.keywords:
                report.keywords += 1
                if kw not in fact["params"]:
                    report.problems.append(f"{call.where}: {call} — {call.name} in {where_from} takes no keyword "
                                           f"'{kw}'")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="api_surface", description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print every call checked")
    parser.add_argument("--update", action="store_true",
                        help=f"rewrite {SNAPSHOT.name} for the installed versions (after a pin changes or a lesson "
                             "calls something new)")
    args = parser.parse_args(argv)
    if args.list:
        for call in extract()[0]:
            print(f"{call.where}: {call}")
    report = check(update=args.update)
    if report.problems:
        print("\n".join(report.problems))
    print(f"api surface: {report.calls} calls of {report.callables} library callables; {report.keywords} keywords "
          f"checked by name, {report.open_keywords} passed to **kwargs, {report.unknown} calls to callables without a "
          f"readable signature; {len(report.problems)} problem(s)")
    if report.live and not args.update:
        print(f"({report.live} callable(s) were not in {SNAPSHOT.name} at the installed version and were asked of the "
              "imported library: `python -m course_utils.runner.api_surface --update` records them)")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
