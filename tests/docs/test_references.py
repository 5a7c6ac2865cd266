"""Pointers into the design and science notes resolve inside the repository.

Code, tests, configuration and docs cite the notes as ``docs/<page>.md §<n>`` (also ``§a, §b``, ``§1.2-1.4``).
Every such pointer must name a page under ``docs/`` that has a Markdown heading starting with that section
number, and no file may cite ``method.md``, ``dicom-results.md`` or ``engineering.md`` other than as
``docs/<name>`` from the repository root (or as a relative Markdown link inside ``docs/`` that resolves there):
the notes these pointers once named lived outside the repository. Two explicit lists hold the exceptions:
``FROZEN`` (files whose bytes must not change; their pointers are still checked) and ``PENDING`` (pointers in files
being edited elsewhere, to be rewritten there).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SCANNED = ("node", "tests", "bench", "models", "docs", "config", "deploy")
SCANNED_FILES = ("README.md", "Makefile", "pyproject.toml")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".html", ".sh", ".env", ".example", ""}
SKIPPED = {Path(__file__).resolve()}  # this file plants bad pointers in its own unit tests
SKIPPED_DIRS = {ROOT / "tests" / "data", ROOT / "models" / "demo"}

#: Pointers in files that other work is editing right now, to be rewritten there (path, exact old text).
#: An entry that no longer occurs fails the test: delete it once the pointer has been rewritten.
PENDING: set[tuple[str, str]] = set()

#: Files whose bytes must not change, with the reason. Their pointers still have to name existing sections: they
#: are checked as if written ``docs/<page>.md`` (``dicom-results.md`` is now ``docs/sr-design.md``).
FROZEN: dict[str, str] = {
    "config/radiomics.yaml": "its SHA-256 is recorded in every trained bundle (radiomics_config.sha256) and checked "
                             "when models load: editing a comment would make the shipped models refuse the features",
}
RENAMED = {"method": "method", "dicom-results": "sr-design", "engineering": "engineering"}

_NUMBER = r"\d+(?:\.\d+)*"
_SECTION = rf"§\s*{_NUMBER}(?:\s*[-–]\s*{_NUMBER})?"
REFERENCE = re.compile(
    rf"docs/(?P<page>[A-Za-z0-9_-]+)\.md`?\s*(?P<sections>{_SECTION}(?:\s*(?:,|/|and)\s*{_SECTION})*)")
SECTION = re.compile(rf"§\s*(?P<start>{_NUMBER})(?:\s*[-–]\s*(?P<end>{_NUMBER}))?")
HEADING = re.compile(rf"^#{{1,6}}\s+(?P<number>{_NUMBER})\.?(?:\s|$)", re.MULTILINE)
NOTE = re.compile(r"(?<![\w./-])(?P<prefix>/?(?:[\w.-]+/)*)(?P<name>method|dicom-results|engineering)"
                  r"(?:(?P<ext>\.md)\b|(?=`?\s*§))")
OUTSIDE = re.compile(r"/work/shared|\.\./shared/")


@dataclass(frozen=True)
class Problem:
    where: str
    text: str
    why: str

    def __str__(self) -> str:
        return f"{self.where}: {self.text!r}: {self.why}"


def page_sections(docs: Path = DOCS) -> dict[str, set[str]]:
    """``{page name: {section numbers of its headings}}`` for every Markdown page under ``docs``."""
    return {path.stem: {m["number"] for m in HEADING.finditer(path.read_text(encoding="utf-8"))}
            for path in sorted(docs.glob("*.md"))}


def _expand(start: str, end: str | None) -> list[str]:
    """``1.2``-``1.4`` -> 1.2, 1.3, 1.4 (same prefix, last part counted); otherwise both ends."""
    if end is None:
        return [start]
    first, last = start.split("."), end.split(".")
    if len(first) == len(last) and first[:-1] == last[:-1] and int(first[-1]) <= int(last[-1]):
        prefix = ".".join(first[:-1])
        return [f"{prefix}.{i}" if prefix else str(i) for i in range(int(first[-1]), int(last[-1]) + 1)]
    return [start, end]


def references(text: str) -> Iterator[tuple[str, str, list[str]]]:
    """``(matched text, page, [section numbers])`` of every ``docs/<page>.md §...`` pointer in ``text``."""
    for match in REFERENCE.finditer(text):
        numbers = [n for s in SECTION.finditer(match["sections"]) for n in _expand(s["start"], s["end"])]
        yield match.group(0), match["page"], numbers


def check_text(text: str, where: str, pages: Mapping[str, set[str]], path: Path | None = None) -> list[Problem]:
    """The broken pointers in ``text`` (the contents of ``where``; ``path`` is its location, for relative links)."""
    problems: list[Problem] = []
    for matched, page, numbers in references(text):
        if page not in pages:
            problems.append(Problem(where, matched, f"there is no docs/{page}.md"))
            continue
        for number in numbers:
            if number not in pages[page]:
                problems.append(Problem(where, matched, f"docs/{page}.md has no heading numbered {number}"))
    for match in NOTE.finditer(text):
        target = f"{match['name']}.md"
        if match["ext"] and match["prefix"] == "docs/":
            continue
        start = match.start()
        linked = match["ext"] and text[max(0, start - 2):start] == "]("  # a relative Markdown link
        if linked and path is not None and (path.parent / match["prefix"] / target).resolve() == DOCS / target:
            continue
        problems.append(Problem(where, match.group(0), f"cite it as docs/{target} (the page inside this repository)"))
    for match in OUTSIDE.finditer(text):
        problems.append(Problem(where, match.group(0), "points outside the repository"))
    return problems


def scanned_files(root: Path = ROOT) -> Iterator[Path]:
    for name in SCANNED_FILES:
        if (root / name).is_file():
            yield root / name
    for folder in SCANNED:
        for path in sorted((root / folder).rglob("*")):
            if (not path.is_file() or path.resolve() in SKIPPED or path.suffix not in SUFFIXES
                    or any(parent in SKIPPED_DIRS for parent in path.parents) or "__pycache__" in path.parts):
                continue
            yield path


def _pending(where: str, problem: Problem, text: str) -> bool:
    return any(where == path and old in text and problem.text in old for path, old in PENDING)


# -- the repository -----------------------------------------------------------------------------------------


def as_in_repo(text: str) -> str:
    """``method.md §1`` -> ``docs/method.md §1`` (``dicom-results.md`` -> ``docs/sr-design.md``), for FROZEN files."""
    return re.sub(r"(?<![\w./-])(method|dicom-results|engineering)\.md", lambda m: f"docs/{RENAMED[m[1]]}.md", text)


def test_every_pointer_names_an_existing_page_and_section() -> None:
    pages = page_sections()
    problems: list[Problem] = []
    for path in scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        where = str(path.relative_to(ROOT))
        if where in FROZEN:
            text = as_in_repo(text)
        problems += [p for p in check_text(text, where, pages, path) if not _pending(where, p, text)]
    assert not problems, "broken pointers into docs/:\n" + "\n".join(map(str, problems))


def test_the_pointers_are_found() -> None:
    """The scan sees the pointers it is meant to check (a regex that matched nothing would pass vacuously)."""
    cited: dict[str, int] = {}
    for path in scanned_files():
        for _, page, _numbers in references(path.read_text(encoding="utf-8", errors="replace")):
            cited[page] = cited.get(page, 0) + 1
    assert cited.get("method", 0) >= 30 and cited.get("sr-design", 0) >= 10 and cited.get("engineering", 0) >= 2, cited


def test_frozen_files_still_hold_old_pointers() -> None:
    """A FROZEN file rewritten on purpose (e.g. with retrained models) no longer needs its entry."""
    for path, why in FROZEN.items():
        text = (ROOT / path).read_text(encoding="utf-8")
        assert as_in_repo(text) != text, f"{path} cites docs/ pages directly now: remove it from FROZEN ({why})"


def test_pending_pointers_are_still_pending() -> None:
    for path, old in PENDING:
        assert old in (ROOT / path).read_text(encoding="utf-8"), (
            f"{path} no longer contains {old!r}: remove it from PENDING in {Path(__file__).name}")


# -- the checker --------------------------------------------------------------------------------------------

PAGES = {"method": {"1", "1.1", "1.2", "1.3", "1.4", "6", "6.2"}, "sr-design": {"2", "2.3"}}


@pytest.mark.parametrize("text", [
    "see docs/method.md §1.4 for the features",
    "(docs/method.md §1.1, §6.2)",
    "docs/method.md §1.2-1.4: resampling to features",
    "`docs/sr-design.md` §2.3",
    "the method of S1 and its engineering",            # plain words, not pointers
    "the methods.md and reengineering.md files",       # other names
])
def test_good_pointers_pass(text: str) -> None:
    assert check_text(text, "x.py", PAGES) == []


@pytest.mark.parametrize(("text", "why"), [
    ("docs/method.md §9.9", "no heading numbered 9.9"),
    ("docs/method.md §1.1, §7", "no heading numbered 7"),
    ("docs/method.md §1.2-1.5", "no heading numbered 1.5"),
    ("docs/missing.md §1", "there is no docs/missing.md"),
    ("see method.md §1.5", "cite it as docs/method.md"),
    ("(dicom-results.md §2)", "cite it as docs/dicom-results.md"),
    ("engineering.md §3.5", "cite it as docs/engineering.md"),
    ("as the method §4 says", "cite it as docs/method.md"),
    ("`/work/shared/docs/method.md`", "cite it as docs/method.md"),
    ("/work/shared/docs/", "points outside the repository"),
])
def test_planted_bad_pointer_is_reported(text: str, why: str) -> None:
    problems = check_text(text, "planted.py", PAGES)
    assert problems and any(why in p.why for p in problems), problems


def test_relative_markdown_link_inside_docs_is_accepted() -> None:
    text = "the [method](method.md#12-preprocessing) and [notes](../elsewhere/method.md)"
    problems = check_text(text, "docs/x.md", PAGES, DOCS / "x.md")
    assert [p.text for p in problems] == ["../elsewhere/method.md"], problems


def test_frozen_text_is_checked_as_in_repo_pointers() -> None:
    assert as_in_repo("see method.md §1.4 and dicom-results.md §2.3") == (
        "see docs/method.md §1.4 and docs/sr-design.md §2.3")
    assert check_text(as_in_repo("(method.md §9)"), "config/x.yaml", PAGES)[0].why == (
        "docs/method.md has no heading numbered 9")


def test_headings_give_section_numbers(tmp_path: Path) -> None:
    (tmp_path / "page.md").write_text("# Title\n\n## 1 One\n\n### 1.2 Two\n\n## 3. Three\n\nnot §4\n#### 4.1\n")
    assert page_sections(tmp_path) == {"page": {"1", "1.2", "3", "4.1"}}
