"""Open a lesson on a cloud GPU: "Open in Colab" / "Open in Kaggle" links and the setup cell that makes them work.

Every lesson carries, from one template and one setting (``[tool.course] repository`` and ``branch`` in
pyproject.toml, the course's public address — a fork changes those two lines and runs ``apply``):

* a line of two badges under its title, linking Google Colab and Kaggle to the lesson's notebook on GitHub
  (the same line in every translation: the badges carry no words to translate);
* a code cell tagged ``cloud-setup`` right after the title, which does nothing on the learner's own machine and, only
  on Colab or Kaggle (detected from ``google.colab`` being importable there, or ``KAGGLE_KERNEL_RUN_TYPE``), clones
  the course, installs its pinned packages (``requirements.txt``) and the course package, and enters ``notebooks/``.

What those machines are, the course already handles: a T4 (Colab's and Kaggle's free GPU) has 16 GB but no native
bf16, so ``safe_defaults`` gives it fp16 with a gradient scaler; Kaggle's two T4s run lesson 13's DDP and FSDP.

    python -m course_utils.runner.cloud check   # every lesson's links and setup cell follow the setting
    python -m course_utils.runner.cloud apply   # rewrite them (English and the translations' title cells)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path

from course_utils.core.paths import REPO_ROOT, atomic_write

SETUP_TAG = "cloud-setup"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
KAGGLE_BADGE = "https://kaggle.com/static/images/open-in-kaggle.svg"
BADGE_LINE = re.compile(r"^\[!\[Open in Colab\]\(.*$", re.M)

SETUP_TEMPLATE = '''\
# Colab or Kaggle only: fetch the course and its pinned packages. On your own machine this cell does nothing.
import os, subprocess, sys


def cloud_setup(repo, branch, env, modules, run):
    """Clone the course, install its pinned packages and enter notebooks/, on Colab or Kaggle; elsewhere None."""
    if "google.colab" in modules:
        root = "/content/course"
    elif "KAGGLE_KERNEL_RUN_TYPE" in env:
        root = "/kaggle/working/course"
    else:
        return None
    if not os.path.isdir(root):
        run(["git", "clone", "--depth", "1", "--branch", branch, repo, root])
    run([sys.executable, "-m", "pip", "install", "--quiet", "-r", f"{{root}}/requirements.txt"])
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-e", root])
    sys.path.insert(0, root)  # this kernel started before the install: make the course package importable now
    os.chdir(f"{{root}}/notebooks")
    return root


COURSE_ROOT = cloud_setup("{repo}", "{branch}", os.environ, sys.modules, subprocess.check_call)'''


def setting(pyproject: Path = REPO_ROOT / "pyproject.toml") -> tuple[str, str]:
    """The course's public repository address and branch, from ``[tool.course]`` in pyproject.toml."""
    table = tomllib.loads(Path(pyproject).read_text()).get("tool", {}).get("course", {})
    repo, branch = table.get("repository"), table.get("branch", "main")
    if not repo or not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repo):
        raise ValueError(f"[tool.course] repository in {pyproject} must be 'https://github.com/<owner>/<name>', "
                         f"not {repo!r}.")
    return repo, branch


def links(stem: str, repo: str, branch: str) -> dict[str, str]:
    """Where a lesson opens: Colab and Kaggle both read the notebook straight from GitHub."""
    path = f"{repo.removeprefix('https://github.com/')}/blob/{branch}/notebooks/{stem}.ipynb"
    return {"colab": f"https://colab.research.google.com/github/{path}",
            "kaggle": f"https://kaggle.com/kernels/welcome?src=https://github.com/{path}"}


def badge_line(stem: str, repo: str, branch: str) -> str:
    url = links(stem, repo, branch)
    return f"[![Open in Colab]({COLAB_BADGE})]({url['colab']}) [![Open in Kaggle]({KAGGLE_BADGE})]({url['kaggle']})"


def setup_source(repo: str, branch: str) -> str:
    return SETUP_TEMPLATE.format(repo=repo, branch=branch)


def with_badges(title: str, line: str) -> str:
    """The title cell with ``line`` as its second paragraph (replacing an older badge line)."""
    if BADGE_LINE.search(title):
        return BADGE_LINE.sub(lambda _: line, title, count=1)
    heading, _, rest = title.partition("\n")
    return f"{heading}\n\n{line}\n" + (rest if rest.startswith("\n") else "\n" + rest if rest else "")


def lessons(notebooks: Path = REPO_ROOT / "notebooks") -> list[Path]:
    return sorted(Path(notebooks).glob("[0-9][0-9]_*.ipynb"))


def problems(notebooks: Path = REPO_ROOT / "notebooks", translations: Path = REPO_ROOT / "translations",
             pyproject: Path = REPO_ROOT / "pyproject.toml") -> list[str]:
    """What ``apply`` would change, one sentence per lesson or catalogue; empty when everything follows the setting."""
    repo, branch = setting(pyproject)
    out = []
    for path in lessons(notebooks):
        nb = json.loads(path.read_text())
        line = badge_line(path.stem, repo, branch)
        title = "".join(nb["cells"][0]["source"])
        if line not in title.split("\n"):
            out.append(f"{path.name}: the title's Colab/Kaggle links do not follow {repo} ({branch}).")
        setup = nb["cells"][1] if len(nb["cells"]) > 1 else {}
        if SETUP_TAG not in setup.get("metadata", {}).get("tags", []) or \
                "".join(setup.get("source", [])) != setup_source(repo, branch):
            out.append(f"{path.name}: cell 2 is not the '{SETUP_TAG}' cell of {repo} ({branch}).")
        for catalogue in sorted(Path(translations).glob(f"*/{path.stem}.json")):
            entry = json.loads(catalogue.read_text())["cells"].get(nb["cells"][0].get("id"))
            if entry and line not in entry["text"].split("\n"):
                out.append(f"{catalogue.relative_to(translations)}: the translated title lacks the links.")
    return out


def apply(notebooks: Path = REPO_ROOT / "notebooks", translations: Path = REPO_ROOT / "translations",
          pyproject: Path = REPO_ROOT / "pyproject.toml") -> list[Path]:
    """Write the badge line into every lesson's title (and its translations: a current one stays current) and the
    setup cell after it. Returns the files changed."""
    from course_utils.i18n.catalog import dumps, sha256

    repo, branch = setting(pyproject)
    changed = []
    for path in lessons(notebooks):
        nb = json.loads(path.read_text())
        before = json.dumps(nb, sort_keys=True)
        title_cell = nb["cells"][0]
        old_title = "".join(title_cell["source"])
        line = badge_line(path.stem, repo, branch)
        new_title = with_badges(old_title, line)
        title_cell["source"] = new_title.splitlines(keepends=True)
        source = setup_source(repo, branch).splitlines(keepends=True)
        setup = nb["cells"][1]
        if SETUP_TAG in setup.get("metadata", {}).get("tags", []):
            setup["source"] = source
        else:
            import secrets

            used = {c.get("id") for c in nb["cells"]}
            new_id = next(i for i in iter(lambda: secrets.token_hex(4), None) if i not in used)
            nb["cells"].insert(1, {"cell_type": "code", "execution_count": None, "id": new_id,
                                   "metadata": {"tags": [SETUP_TAG]}, "outputs": [], "source": source})
        if json.dumps(nb, sort_keys=True) != before:
            with atomic_write(path, "w") as handle:
                handle.write(json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
            changed.append(path)
        for catalogue in sorted(Path(translations).glob(f"*/{path.stem}.json")):
            data = json.loads(catalogue.read_text())
            entry = data["cells"].get(title_cell.get("id"))
            if not entry:
                continue
            before_entry = dict(entry)
            entry["text"] = with_badges(entry["text"], line)
            if entry["source_sha256"] == sha256(old_title):  # it was current: only the links moved
                entry["source_sha256"] = sha256(new_title)
            if entry == before_entry:
                continue
            with atomic_write(catalogue, "w") as handle:
                handle.write(dumps(data))
            changed.append(catalogue)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.runner.cloud", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("check", "apply"))
    args = parser.parse_args(argv)
    try:
        if args.command == "apply":
            for path in apply():
                print(f"wrote {path.relative_to(REPO_ROOT)}")
            return 0
        found = problems()
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    for line in found:
        print(line, file=sys.stderr)
    print(f"cloud: {len(lessons())} lessons open in Colab and Kaggle from one setting" if not found
          else f"cloud: {len(found)} problem(s); run `python -m course_utils.runner.cloud apply`")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
