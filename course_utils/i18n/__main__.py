"""python -m course_utils.i18n build|status|check|stubs — build and check the course's translations.

    python -m course_utils.i18n build                 # notebooks-fr/, notebooks-zh-Hant/, notebooks-ja/
    python -m course_utils.i18n build --lang ja 05    # one language, one lesson (and its solutions)
    python -m course_utils.i18n status                # per language: texts translated / total, stale ones
    python -m course_utils.i18n check                 # also: code spans, links, tables... kept by each translation
    python -m course_utils.i18n stubs --lang fr notebooks/05_llm_inference_4bit.ipynb > translations/fr/05_....json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from course_utils.i18n import catalog


def _status(langs: list[str], verbose: bool) -> int:
    for lang in langs:
        rep = catalog.status(lang)
        coverage = 100 * rep["translated"] / rep["total"] if rep["total"] else 100.0
        line = (f"{lang:8s} {coverage:5.1f} % coverage: {rep['translated']:4d} / {rep['total']} texts translated; "
                f"{len(rep['stale'])} stale, {len(rep['missing'])} missing in existing catalogues, "
                f"{len(rep['copies'])} English copies, {len(rep['no_catalogue'])} files without a catalogue")
        print(line)
        for key in rep["stale"]:
            print(f"    stale:    {key}")
        for key in rep["copies"]:
            print(f"    copy:     {key} (the English text with the right hash: translate it)")
        if verbose:
            for key in rep["missing"]:
                print(f"    missing:  {key}")
            for label, (done, total) in rep["files"].items():
                print(f"    {label:40s} {done:3d} / {total}")
        for key in rep["orphans"]:
            print(f"    orphan entry (matches no English text): {key}")
    return 0


def _check(langs: list[str]) -> int:
    from course_utils.i18n import checks

    bad = 0
    for lang in langs:
        for source in catalog.lessons():
            res = catalog.resolve(lang, source)
            for key, text in res.texts.items():
                for problem in checks.problems(res.english[key], text):
                    bad += 1
                    print(f"{lang} {catalog.label(source)} {key}: {problem}")
    print(f"{bad} problem(s)")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.i18n", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write notebooks-<lang>/ from notebooks/ and translations/<lang>/")
    b.add_argument("--lang", choices=catalog.LANGUAGES, help="default: every language")
    b.add_argument("--out", type=Path, help="folder that receives notebooks-<lang>/ (default: the repository)")
    b.add_argument("lessons", nargs="*", help="lesson numbers or stems (default: all)")
    s = sub.add_parser("status", help="per language: texts translated / total, stale texts")
    s.add_argument("--lang", choices=catalog.LANGUAGES)
    s.add_argument("-v", "--verbose", action="store_true", help="also per file, and the missing entries")
    c = sub.add_parser("check", help="the translations keep code spans, links, URLs, tables, headings, code blocks")
    c.add_argument("--lang", choices=catalog.LANGUAGES)
    t = sub.add_parser("stubs", help="print a catalogue skeleton (English texts and their hashes) for a translator")
    t.add_argument("--lang", choices=catalog.LANGUAGES, required=True)
    t.add_argument("source", type=Path, help="notebooks/NN_name.ipynb or notebooks/solutions/NN_name.md")
    args = parser.parse_args(argv)
    langs = [args.lang] if getattr(args, "lang", None) else list(catalog.LANGUAGES)
    try:
        if args.command == "build":  # every language is tried; one that refuses does not block the others
            failed = 0
            for lang in langs:
                try:
                    written = catalog.build(lang, out=args.out, selection=args.lessons or None)
                except catalog.TranslationError as err:
                    print(f"i18n: {err}", file=sys.stderr)
                    failed += 1
                    continue
                where = written[0].parent if written else "-"
                print(f"{lang}: {len(written)} file(s) built in {where}")
            return 1 if failed else 0
        if args.command == "status":
            return _status(langs, args.verbose)
        if args.command == "check":
            return _check(langs)
        if not args.source.exists():
            raise catalog.TranslationError(f"No such file {args.source}; give a notebooks/NN_name.ipynb or "
                                           "notebooks/solutions/NN_name.md path.")
        sys.stdout.write(catalog.dumps(catalog.stub(args.lang, args.source)))
        return 0
    except catalog.TranslationError as err:
        print(f"i18n: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
