"""The docs are true: every README section and repository file that the code, configs and
scripts point to exists, and the project cites nothing outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PROSE = re.sub(r"^```.*?^```", "", README, flags=re.M | re.S)  # no comments of code blocks
HEADINGS = {m.group(1).strip() for m in re.finditer(r"^#{1,6}\s+(.+)$", PROSE, re.M)}
# README, "Section" / README, 'Section' / README "Section" / README.md, 'Section'
SECTION_REF = re.compile(r"README(?:\.md)?,?\s+\\?[\"'“]([^\"'”\\]+)\\?[\"'”]")


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # an unpacked sdist: no git
        pytest.skip("not a git checkout")
    return [ROOT / f for f in out if not f.endswith(".png")]


def _texts() -> dict[str, str]:
    out = {}
    for path in _tracked():
        try:
            if path.name != "test_docs.py":  # its own patterns and examples
                out[str(path.relative_to(ROOT))] = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
    return out


def test_every_readme_section_referred_to_exists():
    refs = {
        (name, m.group(1)) for name, text in _texts().items() for m in SECTION_REF.finditer(text)
    }
    assert len(refs) >= 5, refs  # the configs, teachers, Makefile, ... do point into the README
    heads = {h.strip("`") for h in HEADINGS}
    missing = sorted((name, section) for name, section in refs if section not in heads)
    assert not missing, f"README has no such section: {missing}; it has {sorted(heads)}"


def test_local_links_and_images_in_the_readme_exist():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    local = [link for link in links if "://" not in link]
    assert local, "the README shows the demo's plots"
    assert all((ROOT / link).exists() for link in local), local


def test_files_the_docs_and_scripts_name_exist():
    named = set()
    for name in ("README.md", "CONTRIBUTING.md", "Makefile", ".ci/run"):
        text = (ROOT / name).read_text()
        named |= set(
            re.findall(
                r"(?<![\w/.~$-])((?:benchmarks|tests|kernels|s2bnn_plugin|docs|solo_configs)"
                r"/[\w/.-]+\.(?:py|md|png|yaml|txt)|constraints\.txt|CONTRIBUTING\.md)",
                text,
            )
        )
    assert "constraints.txt" in named
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, missing


def test_nothing_outside_the_repository_is_cited():
    outside = re.compile(r"S2BNN_FACTS|SOLO_CONTRACT")
    hits = [name for name, text in _texts().items() if outside.search(text)]
    assert not hits, f"these files cite notes that live outside the repository: {hits}"


def test_the_readme_speaks_to_users_not_to_the_tracker():
    words = re.findall(r"\b(?:issue|task)s?\s+\d+|\bthis task\b", README, re.I)
    assert not words, words


def test_the_demo_time_is_one_figure_everywhere():
    """The demo's stated duration (about 8 minutes) is the same in the README, the Makefile and
    the command's help."""
    from s2bnn_plugin.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    help_text = sub.choices["demo"].description
    texts = {"help": help_text, "Makefile": (ROOT / "Makefile").read_text(), "README": README}
    stated = {
        where: {
            m
            for line in text.splitlines()
            if "demo" in line or where == "help"
            for m in re.findall(r"about (\d+) minutes", line)
        }
        for where, text in texts.items()
    }
    assert all(stated.values()), stated
    assert len(set().union(*stated.values())) == 1, stated
