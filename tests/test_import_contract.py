"""course_utils imports one way: no cycles between its modules, imports inside functions included.

The smoke stand-ins (``course_utils.smoke``) sit below the loaders (``course_utils.topics``): a smoke module takes what
full mode pins from the leaf ``course_utils.topics.spec``, never from a topic module that imports it back.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "course_utils"


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the course modules it imports anywhere in its code (the longest module prefix of each name)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + ".") and target != "course_utils":
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles, each as the modules along it (depth-first search from every module)."""
    found, done = [], set()

    def visit(node: str, stack: list[str]) -> None:
        done.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt in stack:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, stack)
        stack.pop()

    for node in sorted(graph):
        if node not in done:
            visit(node, [])
    return found


def test_no_import_cycles():
    found = cycles(import_graph(modules()))
    assert not found, "import cycles in course_utils (move what both sides need into a leaf module): " + \
        "; ".join(" -> ".join(c) for c in found)


def test_smoke_takes_full_mode_pins_from_the_leaf_only():
    graph = import_graph(modules())
    upward = {m: sorted(t for t in targets if t.startswith("course_utils.topics.") and t != "course_utils.topics.spec")
              for m, targets in graph.items() if m.startswith("course_utils.smoke.")}
    assert not any(upward.values()), f"smoke modules import topic modules: {upward}"
    spec = graph["course_utils.topics.spec"]
    assert not any(t.startswith(("course_utils.topics.", "course_utils.smoke")) for t in spec), \
        f"topics.spec is a leaf, but imports {sorted(spec)}"


def test_the_contract_finds_a_cycle_in_functions(tmp_path):
    pkg = tmp_path / "course_utils"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from course_utils.a.y import f\n")
    (pkg / "a" / "y.py").write_text("def f():\n    from . import x\n")
    assert cycles(import_graph(modules(pkg))) == [["course_utils.a.x", "course_utils.a.y", "course_utils.a.x"]]
