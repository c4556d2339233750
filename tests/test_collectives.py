"""Collectives on the right device: recipes/train_multi.py hands torch.distributed only tensors on
``accelerator.device``, which NCCL (every GPU engine) requires; gloo on CPUs would take any CPU tensor.

``tests/collective_guard.py`` makes the CPU run as strict as NCCL: it marks tensors the recipe creates without
``device=`` and fails any collective that gets one. The guarded runs themselves are ``make engines``' ZeRO-2 and ZeRO-3
in tests/test_multigpu.py; here, in-process and in milliseconds, the guard is held to catching the defect: the
recipe's own end-of-run statements pass, and the same statements without ``device=accelerator.device`` fail.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import collective_guard as guard  # noqa: E402  (tests/collective_guard.py)

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "train_multi.py"


def _gather_statements(drop_device: bool = False) -> str:
    """The recipe's statements that build the tensors its end-of-run ``all_gather`` sends (``mine``, ``per_rank_bytes``),
    as written in main(); ``drop_device`` removes their ``device=`` arguments (the defect)."""
    main = next(n for n in ast.parse(RECIPE.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == "main")
    wanted = [n for n in main.body if isinstance(n, ast.Assign) and len(n.targets) == 1
              and isinstance(n.targets[0], ast.Name) and n.targets[0].id in ("mine", "per_rank_bytes")]
    assert [n.targets[0].id for n in wanted] == ["mine", "per_rank_bytes"], "train_multi.py's all_gather changed"
    if drop_device:
        for call in (c for n in wanted for c in ast.walk(n) if isinstance(c, ast.Call)):
            call.keywords = [k for k in call.keywords if k.arg != "device"]
    return ast.unparse(ast.Module(body=wanted, type_ignores=[]))


def _run_end_of_run(source: str) -> list:
    """Run the statements as the recipe's own code (its file name) under the guard, then its all_gather."""
    sent = []
    all_gather = guard.guarded("all_gather", lambda out, t: sent.append(t))
    scope = {"torch": torch, "world": 2, "held": {"param_bytes": 4, "grad_bytes": 4, "optimizer_bytes": 8},
             "accelerator": SimpleNamespace(device=torch.device("cpu"))}
    with guard.Provenance({str(RECIPE)}):
        exec(compile(source, str(RECIPE), "exec"), scope)
        all_gather(scope["per_rank_bytes"], scope["mine"])
    return sent


def test_the_recipes_all_gather_sends_tensors_made_on_the_accelerators_device():
    (sent,) = _run_end_of_run(_gather_statements())
    assert sent.tolist() == [4, 4, 8]


def test_the_guard_fails_the_cpu_tensor_nccl_would_refuse():
    """Item 1 of issue 25, reintroduced: the same statements without device= fail on a CPU machine."""
    with pytest.raises(guard.WrongDevice, match=r"all_gather got a tensor on cpu .*without device=accelerator.device"):
        _run_end_of_run(_gather_statements(drop_device=True))


def test_marks_follow_the_data_and_a_device_clears_them():
    src = ("a = torch.tensor([1.0, 2.0])\nb = torch.zeros_like(a)\nc = torch.stack([a, b])[0] * 2\n"
           "d = (c + 1).to(torch.device('cpu'))\ne = torch.ones(2, device='cpu')\nf = e + a\ng = a.to(torch.float64)\n")
    scope = {"torch": torch}
    with guard.Provenance({"<recipe>"}):
        exec(compile(src, "<recipe>", "exec"), scope)
        made_elsewhere = torch.zeros(2)  # this test's own code is not the recipe: not marked
    marked = {name for name in "abcdefg" if getattr(scope[name], guard.MARK, False)}
    assert marked == {"a", "b", "c", "f", "g"}, marked
    assert not getattr(made_elsewhere, guard.MARK, False)
