"""Every command the README and docs/ give still parses as written: the script exists, and every flag it passes is
one of that script's flags (the smoke pipeline itself is run by test_reliability.py; the benchmarks by
test_benchmarks.py)."""

import glob
import os
import re

import pytest

import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
ALIASES = {"ablate.py": {"--scales"}}  # old flag names that still work, with a note


def commands(text):
    """Every `python SCRIPT.py ...` command line in a page: code-block lines and inline code spans."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        lines += [line for line in joined.splitlines()]
    lines += re.findall(r"`([^`\n]*python [^`\n]*)`", text)
    out = []
    for line in lines:
        for m in re.finditer(r"python (?:-m \w+ )?([\w/]+\.py)([^#&|\n]*)", line):
            out.append((m.group(1), m.group(2).rstrip()))
    return out


def test_the_pages_give_commands():
    found = [c for page in PAGES for c in commands(open(os.path.join(ROOT, page)).read())]
    assert len(found) > 20 and any(s == "fzs.py" for s, _ in found)


def test_the_parser_sees_a_planted_command():
    assert commands("run\n```\npython fzs.py --layers 2.1 --steps 16  # quick\n```\nand `python atlas.py --results r`") == [
        ("fzs.py", " --layers 2.1 --steps 16"), ("atlas.py", " --results r")]


def unknown(script, args):
    """['SCRIPT: no such script'] or ['SCRIPT --flag', ...] for what a command names that does not exist."""
    path = os.path.join(ROOT, script)
    if not os.path.isfile(path):
        return [f"{script}: no such script"]
    if script.startswith("tests/"):
        return []  # the mutation check has its own argparse options
    known = {"--help", "-h"} | ALIASES.get(script, set())
    for name in cli.flag_names(path):
        known |= {f"--{name.lower()}", f"--{name.lower().replace('_', '-')}"}
    return [f"{script} {flag}" for flag in re.findall(r"(?<![\w-])(--[\w-]+)", args) if flag not in known]


def test_a_planted_typo_is_seen():
    assert unknown("fzs.py", " --layers 2.1 --step 16") == ["fzs.py --step"]
    assert unknown("fz.py", "") == ["fz.py: no such script"]
    assert unknown("criteria.py", " --paper_weights X") == ["criteria.py --paper_weights"]  # a constant, not a flag


@pytest.mark.parametrize("page", PAGES)
def test_every_command_names_real_flags(page):
    bad = [u for script, args in commands(open(os.path.join(ROOT, page)).read()) for u in unknown(script, args)]
    assert not bad, f"{page}: commands with unknown scripts or flags: {', '.join(bad)}"


# ----------------------------------------------------------------------------------------------------
# The method page: every "docs/method.md section N" cited in the code and the docs is a section of it

def method_citations(text):
    """The section numbers a text cites: 'docs/method.md section 3', 'docs/method.md sections 4 and 5',
    '(method.md) section 2's', 'docs/method.md Eq. 3' (section 5)."""
    out = []
    for m in re.finditer(r"method\.md\)?\s+sections?\s+((?:\d+(?:,\s*|\s+and\s+)?)+)", text):
        out += [int(n) for n in re.findall(r"\d+", m.group(1))]
    return out


def test_the_method_citations_are_read():
    assert method_citations("(docs/method.md section 3) and docs/method.md sections 4 and 5; docs/method.md section 2's") == [
        3, 4, 5, 2]


def test_every_cited_section_of_the_method_exists():
    page = open(os.path.join(ROOT, "docs", "method.md")).read()
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", page, re.M)}
    files = PAGES + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "*.py"))
                           + glob.glob(os.path.join(ROOT, "tests", "*.py")))
    cited = {(f, n) for f in files for n in method_citations(open(os.path.join(ROOT, f)).read())}
    assert len({f for f, _ in cited}) > 10, "the scripts no longer cite the method page"
    missing = sorted(f"{f}: section {n}" for f, n in cited if n not in sections)
    assert not missing, f"cited sections that docs/method.md lacks: {', '.join(missing)}"
    stale = [f for f in files if "METHOD.md" in open(os.path.join(ROOT, f)).read() and f != "tests/test_docs.py"]
    assert not stale, f"these cite METHOD.md, which is not in the repository (docs/method.md is): {', '.join(stale)}"
