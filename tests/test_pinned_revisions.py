"""Pinned loads: every call that can fetch from the Hugging Face hub — in the lessons' code cells, the recipes and the
package — passes a pinned ``revision=``. A load without one takes the hub's "main", which moves under the lesson's
numbers and fails offline when only the pinned snapshot is cached (lesson 13's second load of the 8B did)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from course_utils.core.paths import REPO_ROOT

#: The calls that download from the hub when given a hub id.
HUB_CALLS = {"from_pretrained", "hf_hub_download", "snapshot_download", "load_dataset", "SentenceTransformer",
             "CrossEncoder"}
COMMIT = re.compile(r"[0-9a-f]{40}")

#: Calls on a local folder or a tiny stand-in built offline: nothing to pin. Keyed by (file or lesson, the callee and
#: its first argument as written); each says what the folder is.
LOCAL = {
    ("06_qlora_finetune_8b", "PeftModel.from_pretrained(fresh_base, checkpoint)"): "the run's own checkpoint folder",
    ("06_qlora_finetune_8b", "PeftModel.from_pretrained(base, adapter_dir)"): "the adapter the lesson just saved",
    ("06_qlora_finetune_8b", "PeftModel.from_pretrained(base16, adapter_dir)"): "the adapter the lesson just saved",
    ("10_whisper_asr", "WhisperForConditionalGeneration.from_pretrained(model_dir)"): "the model the lesson just saved",
    ("11_llava_vlm", "PeftModel.from_pretrained(base_model, adapter_dir)"): "the adapter the lesson just saved",
    ("14_nlp_finetune_bert", "AutoTokenizer.from_pretrained(classifier_dir)"): "the classifier the lesson just saved",
    ("14_nlp_finetune_bert", "AutoModelForSequenceClassification.from_pretrained(classifier_dir)"):
        "the classifier the lesson just saved",
    ("course_utils/demo/tabs.py", "WhisperProcessor.from_pretrained(str(self.artefacts.whisper))"):
        "lesson 10's saved model (the demo's artefacts)",
    ("course_utils/demo/tabs.py", "WhisperForConditionalGeneration.from_pretrained(str(self.artefacts.whisper))"):
        "lesson 10's saved model (the demo's artefacts)",
    ("course_utils/demo/tabs.py", "PeftModel.from_pretrained(model, str(self.artefacts.qlora_adapter))"):
        "lesson 06's saved adapter",
    ("course_utils/demo/tabs.py", "PeftModel.from_pretrained(model, str(self.artefacts.llava_adapter))"):
        "lesson 11's saved adapter",
    ("course_utils/smoke/rag.py", "AutoTokenizer.from_pretrained(str(bundled_embedder_path(verify=False)))"):
        "the embedder the course ships in datasets/",
    ("course_utils/smoke/speech.py", "WhisperTokenizer.from_pretrained(str(folder))"): "the tiny Whisper built offline",
    ("course_utils/topics/rag.py", "SentenceTransformer(str(bundled_embedder_path()))"): "the embedder the course ships",
    ("course_utils/topics/rag.py", "CrossEncoder(str(tiny_cross_encoder_dir()))"): "the tiny reranker built offline",
    ("recipes/chat_4bit.py", "PeftModel.from_pretrained(model, args.adapter)"): "--adapter: a folder the user trained",
    ("recipes/serve_demo.py", "PeftModel.from_pretrained(model, args.adapter)"): "--adapter: a folder the user trained",
}


def _sources() -> list[tuple[str, str, ast.AST]]:
    """(file or lesson, where in it, parsed code) for every lesson's code cells, recipe and package module."""
    found = []
    for path in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                                 for line in "".join(cell["source"]).splitlines())
                found.append((path.stem, f"cell {i}, line ", ast.parse(code)))
    for folder in ("recipes", "course_utils"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            found.append((str(path.relative_to(REPO_ROOT)), "", ast.parse(path.read_text())))
    return found


def _callee(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _key(node: ast.Call) -> str:
    return f"{ast.unparse(node.func)}({', '.join(ast.unparse(a) for a in node.args)})"


def _assignments(tree: ast.AST):
    """(name, value) for every ``name = value`` (also ``a, b = x, y`` and annotated ones)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            yield node.target.id, node.value
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    yield target.id, node.value
                elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    yield from ((t.id, v) for t, v in zip(target.elts, node.value.elts) if isinstance(t, ast.Name))


def hub_calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and _callee(node) in HUB_CALLS]


def unpinned(where: str, tree: ast.AST | str, at: str = "") -> list[str]:
    """One line per hub call in ``tree`` without a pinned revision (and not on the LOCAL list)."""
    tree = ast.parse(tree) if isinstance(tree, str) else tree
    with_revision = None
    problems = []
    for node in hub_calls(tree):
        if (where, _key(node)) in LOCAL:
            continue
        revision = next((k.value for k in node.keywords if k.arg == "revision"), None)
        unpacked = [k.value.id for k in node.keywords if k.arg is None and isinstance(k.value, ast.Name)]
        if revision is None and unpacked:
            # **kwargs passes a revision when the dict it unpacks is built with one (speech.py, vlm.py)
            if with_revision is None:
                with_revision = {name for name, value in _assignments(tree) if "revision" in ast.unparse(value)}
            if set(unpacked) & with_revision:
                continue
        if revision is not None and not (isinstance(revision, ast.Constant)
                                         and not (isinstance(revision.value, str) and COMMIT.fullmatch(revision.value))):
            continue  # an expression (a pin, a --revision flag) or a 40-hex literal
        said = "no revision" if revision is None else f"revision={ast.unparse(revision)}"
        problems.append(f"{where}:{at}{node.lineno}: {_key(node)} has {said}")
    return problems


SOURCES = [(where, at, tree, hub_calls(tree)) for where, at, tree in _sources()]


def test_every_hub_load_passes_a_pinned_revision():
    problems = [p for where, at, tree, calls in SOURCES if calls for p in unpinned(where, tree, at)]
    assert not problems, ("hub loads without a pinned revision (pass revision=<the course's pin>, or list a local "
                          "folder in LOCAL with what it is):\n" + "\n".join(problems))


def test_the_local_list_names_only_calls_that_exist():
    keys = {(where, _key(node)) for where, _, _, calls in SOURCES for node in calls}
    assert not set(LOCAL) - keys, f"stale LOCAL entries: {sorted(set(LOCAL) - keys)}"


@pytest.mark.parametrize("call, caught", [
    ("AutoModel.from_pretrained(MODEL_ID, revision=REVISION)", False),
    ("AutoModel.from_pretrained(MODEL_ID)", True),
    ("AutoModel.from_pretrained(MODEL_ID, revision='main')", True),
    ("AutoModel.from_pretrained(MODEL_ID, revision=None)", True),
    ("AutoModel.from_pretrained(MODEL_ID, revision='" + "0" * 40 + "')", False),
    ("kwargs = {'revision': rev}\nAutoModel.from_pretrained(MODEL_ID, **kwargs)", False),
    ("kwargs = {'dtype': d}\nAutoModel.from_pretrained(MODEL_ID, **kwargs)", True),
    ("source, kwargs = m, {'revision': r}\nAutoModel.from_pretrained(source, **kwargs)", False),
    ("hf_hub_download('a/b', 'model.pt')", True),
])
def test_the_check_sees_a_missing_revision(call, caught):
    assert bool(unpinned("x.py", call)) is caught
