"""The docs are true: every README or docs/ section and repository file that the code, configs
and scripts point to exists, links resolve, the README stays short, and the project cites
nothing outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").rglob("*.md"))
PAGES = {"README": ROOT / "README.md", **{str(p.relative_to(ROOT)): p for p in DOCS}}
# README, "Section" / README.md, 'Section' / docs/training.md, "Section"
SECTION_REF = re.compile(r"(README(?:\.md)?|docs/[\w/-]+\.md),?\s+\\?[\"'“]([^\"'”\\]+)\\?[\"'”]")
# a run diary or a history of designs: belongs in commit messages and notes, not in the docs
DIARY = re.compile(
    r"\b(?:(?:fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|\d+th) run\b|"
    r"(?:this|last|previous|the epilogue's last) round\b|"
    r"this session\b|previous session\b|built and measured, not kept)",
    re.I,
)


def _headings(path: Path) -> set[str]:
    prose = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {m.group(1).strip().strip("`") for m in re.finditer(r"^#{1,6}\s+(.+)$", prose, re.M)}


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


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


def test_every_section_referred_to_exists():
    refs = {
        (name, m.group(1), m.group(2))
        for name, text in _texts().items()
        for m in SECTION_REF.finditer(text)
    }
    assert len(refs) >= 5, refs  # the configs, teachers, Makefile, ... do point into the docs
    missing = []
    for name, page, section in sorted(refs):
        page = "README" if page.startswith("README") else page
        if page not in PAGES or section not in _headings(PAGES[page]):
            missing.append((name, page, section))
    assert not missing, f"no such page or section: {missing}"


@pytest.mark.parametrize("page", list(PAGES))
def test_local_links_images_and_anchors_exist(page):
    path = PAGES[page]
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    links = [link for link in re.findall(r"\]\(([^)]+)\)", text) if "://" not in link]
    if page == "README":
        assert any(link.startswith("docs/") for link in links), "the README links into docs/"
    bad = []
    for link in links:
        target, _, anchor = link.partition("#")
        file = (path.parent / target) if target else path
        if not file.exists():
            bad.append(link)
        elif anchor and file.suffix == ".md":
            if anchor not in {_anchor(h) for h in _headings(file)}:
                bad.append(link)
    assert not bad, f"{page}: broken links {bad}"


def test_the_readme_is_short_and_every_docs_page_is_linked():
    assert len(README.splitlines()) < 300, "README.md is a five-minute read: depth goes in docs/"
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)", README))
    pages = {str(p.relative_to(ROOT)) for p in DOCS if p.parent == ROOT / "docs"}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"


def test_no_run_diaries_in_the_docs_or_the_code():
    hits = {
        name: DIARY.findall(text)
        for name, text in _texts().items()
        if name.endswith((".md", ".py", ".yaml")) and DIARY.search(text)
    }
    assert not hits, f"run histories belong in commit messages: {hits}"


def test_files_the_docs_and_scripts_name_exist():
    named = set()
    for path in [ROOT / n for n in ("README.md", "CONTRIBUTING.md", "Makefile", ".ci/run")] + DOCS:
        text = path.read_text()
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


def test_the_docs_speak_to_users_not_to_the_tracker():
    for page, path in PAGES.items():
        words = re.findall(r"\b(?:issue|task)s?\s+\d+|\bthis task\b", path.read_text(), re.I)
        assert not words, (page, words)


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


def test_the_method_settings_table_is_the_codes():
    """docs/training.md's table of ``method_kwargs`` is generated from the one table of
    settings (``SETTINGS``), and the defaults the README names are that table's."""
    from s2bnn_plugin.methods.settings import SETTINGS, default_words, markdown_table

    training = (ROOT / "docs" / "training.md").read_text()
    table = markdown_table()
    assert table in training, (
        "docs/training.md's settings table differs from the code's; replace it with "
        f"s2bnn_plugin.methods.settings.markdown_table():\n{table}"
    )
    keys = [s.key for s in SETTINGS]
    for setting in SETTINGS:  # every key, its default and its range, in the table's order
        row = next(line for line in table.splitlines() if line.startswith(f"| `{setting.key}` |"))
        assert row.split(" | ")[1] == default_words(setting)
    assert [line.split("`")[1] for line in table.splitlines()[2:]] == keys

    paragraph = next(p for p in README.split("\n\n") if p.startswith("The main `method_kwargs`"))
    named = dict(re.findall(r"`([\w.]+)` \(([^,;)]+)", paragraph))
    assert {"teacher.ckpt", "temperature", "loss", "student_init"} <= set(named), named
    by_key = {s.key: s for s in SETTINGS}
    assert {key: named[key] for key in named} == {key: default_words(by_key[key]) for key in named}
