"""The README's "Your hardware" section says what the code does for 8, 12, 16 and 24 GB cards.

Each row of its table is checked against ``cu.safe_defaults`` (for a card reporting what such a card reports, e.g.
11.99 GiB for a 12 GB card) and against the lessons' ``choose_device(..., min_vram_gb=...)`` minimums, read from the
notebooks' source. When a lesson's minimum or a plan changes, this test names the README cell to update
(``python tests/test_defaults.py`` prints the table the code implies).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import course_utils as cu
from course_utils.core.defaults import card_box_gb
from course_utils.runner.params import lesson_parameters

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
#: what each card reports to PyTorch (GiB): a little under its box
CARDS = {8: 8188 / 1024, 12: 12282 / 1024, 16: 16376 / 1024, 24: 24564 / 1024}
HEADER = "| card | lessons whose full mode starts | QLoRA 8B (`llm-qlora`) | 8B inference (`llm-inference`) | GPT training (`gpt-train`) | YOLO training (`yolo-train`) |"


def lesson_minimum(path: Path) -> float | None:
    """The VRAM a lesson's full mode asks for (``choose_device(..., min_vram_gb=...)``); None: runs anywhere."""
    notebook = json.loads(path.read_text())
    source = "\n".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    match = re.search(r"choose_device\([^)]*?min_vram_gb\s*=\s*([A-Za-z_][A-Za-z_0-9]*|[0-9.]+)", source, re.S)
    assert match, f"{path.name}: no choose_device(..., min_vram_gb=...) in its code"
    value = match.group(1)
    if value == "None":
        return None
    if re.fullmatch(r"[0-9.]+", value):
        return float(value)
    param = lesson_parameters(path).get(value)  # e.g. min_vram_gb=MIN_VRAM_GB from the parameters cell
    assert param and isinstance(param.default, (int, float)), f"{path.name}: cannot read {value} from its parameters cell"
    return float(param.default)


def _ranges(numbers: list[int]) -> str:
    parts, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(f"{start:02d}" if start == n else f"{start:02d}–{n:02d}")
            start = None
    return ", ".join(parts)


def lessons_cell(box: int) -> str:
    minimums = {int(p.name[:2]): lesson_minimum(p) for p in LESSONS}
    starts = [n for n, m in sorted(minimums.items()) if m is None or m <= box]
    if len(starts) == len(minimums):
        return "all"
    missing = [f"{n:02d} needs {minimums[n]:g} GB" for n in sorted(minimums) if n not in starts]
    return f"{_ranges(starts)} ({'; '.join(missing)})"


def plan_cell(task: str, box: int) -> str:
    d = cu.safe_defaults(task, vram_gb=CARDS[box], bf16=True)
    text = f"{d.micro_batch_size} × {d.gradient_accumulation_steps}"
    if task in ("llm-qlora", "gpt-train"):
        text += f", {d.max_seq_len} tokens"
    if task == "llm-inference":
        text = f"{'4-bit' if d.load_in_4bit else '16-bit'}, {d.max_seq_len} tokens"
    return text


def expected_rows() -> list[str]:
    rows = []
    for box in CARDS:
        cells = [f"{box} GB", lessons_cell(box), plan_cell("llm-qlora", box), plan_cell("llm-inference", box),
                 plan_cell("gpt-train", box), plan_cell("yolo-train", box)]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def hardware_section() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Your hardware\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README.md has no '## Your hardware' section"
    return match.group(1)


def test_cards_report_less_than_their_box_and_get_its_plan():
    for box, reported in CARDS.items():
        assert reported < box and card_box_gb(reported) == box


@pytest.mark.parametrize("box", list(CARDS))
def test_readme_hardware_table_row_matches_the_code(box):
    section = hardware_section()
    assert HEADER in section, "the hardware table's header changed: update HEADER here or the README"
    rows = {line.split(" | ")[0]: line for line in section.splitlines() if line.startswith(f"| {box} GB |")}
    expected = expected_rows()[list(CARDS).index(box)]
    assert rows, f"README's hardware table has no {box} GB row; it should read:\n{expected}"
    (row,) = rows.values()
    assert row == expected, f"README's {box} GB row disagrees with the code.\n README: {row}\n code:   {expected}"


def test_readme_hardware_prose_matches_the_code():
    section = hardware_section()
    # "7-8B models load in 16-bit from 20 GB up"
    from course_utils.core.defaults import SIXTEEN_BIT_FROM_GB

    assert f"16-bit from {SIXTEEN_BIT_FROM_GB} GB" in section
    assert cu.safe_defaults("llm-inference", vram_gb=19.99, bf16=True).load_in_4bit is False
    assert cu.safe_defaults("llm-inference", vram_gb=15.99, bf16=True).load_in_4bit is True
    # "a 12 GB card reports about 11.99 GiB and gets the 12 GB plan"
    assert "11.99 GiB" in section and card_box_gb(11.99) == 12
    # the QLoRA figures quoted in the prose are the estimator's
    from course_utils.core import memory

    for seq, chunked, words in ((2048, False, "estimated at {:.1f} GiB"), (2048, True, "({:.1f} GiB with a chunked"),
                                (1024, False, "puts at {:.1f} GiB"), (1024, True, "and {:.1f} GiB with a")):
        gb = memory.estimate_training_vram(memory.LLAMA_3_1_8B, "qlora", seq_len=seq, chunked_loss=chunked).total_gb
        assert words.format(gb) in " ".join(section.split()), f"README quotes another figure than {words.format(gb)}"
    # the smallest card every lesson starts on is the one the README calls the reference
    assert lessons_cell(12) == "all", "not every lesson starts on a 12 GB card: the README's reference claim is wrong"


if __name__ == "__main__":
    print(HEADER)
    print("|---|---|---|---|---|---|")
    print("\n".join(expected_rows()))
