"""The repository's documentation stays reachable and complete.

Every `docs/<page>.md#<anchor>` reference in code, SQL, tests and the README, and every relative Markdown
link inside docs/, points at an existing page and at a heading of it (GitHub's anchor rules); every page is
in the docs index; every setting has a row in docs/configuration.md showing its default.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.config.settings import SPECS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Where links to docs/ may appear; virtualenvs and caches are not walked.
SOURCE_ROOTS = ("service", "challengectl", "tests", "bench", "sql", "docs", ".ci")
SOURCE_SUFFIXES = {".py", ".sql", ".md", ".proto", ".toml", ".txt", ""}
TOP_LEVEL_FILES = ("README.md", "pyproject.toml")

DOCS_REFERENCE = re.compile(r"docs/([A-Za-z0-9_-]+\.md)(?:#([a-z0-9_-]+))?")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(markdown: str) -> set[str]:
    """Every heading anchor of a page, with GitHub's -1, -2 … suffixes for repeated headings;
    lines inside fenced code blocks are not headings."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match is None:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


def source_files() -> list[Path]:
    files = [ROOT / name for name in TOP_LEVEL_FILES if (ROOT / name).is_file()]
    for top in SOURCE_ROOTS:
        base = ROOT / top
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            if path.is_file() and path.suffix in SOURCE_SUFFIXES and "__pycache__" not in path.parts:
                files.append(path)
    return sorted(files)


def docs_references(text: str) -> list[tuple[str, str | None]]:
    """(page, anchor or None) of every `docs/<page>.md[#anchor]` in a text."""
    return [(page, anchor or None) for page, anchor in DOCS_REFERENCE.findall(text)]


def relative_links(page: Path) -> list[tuple[Path, str | None, str]]:
    """(target file, anchor or None, the link as written) of every local link in a docs page."""
    links = []
    for target in MARKDOWN_LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        links.append((resolved, anchor or None, target))
    return links


def broken(target: Path, anchor: str | None) -> str | None:
    """Why a link to `target#anchor` does not resolve, or None when it does."""
    if not target.is_file():
        return f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target} does not exist"
    if anchor is not None and target.suffix == ".md" and anchor not in anchors_of(target.read_text(encoding="utf-8")):
        return f"{target.name} has no heading with anchor #{anchor}"
    return None


def test_every_docs_reference_in_the_repository_resolves() -> None:
    problems = []
    checked = 0
    for path in source_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for page, anchor in docs_references(text):
            checked += 1
            reason = broken(DOCS / page, anchor)
            if reason:
                problems.append(f"{path.relative_to(ROOT)}: docs/{page}{'#' + anchor if anchor else ''}: {reason}")
    assert checked > 100, f"only {checked} docs/ references found: is the scan looking in the right places?"
    assert not problems, "broken documentation links:\n" + "\n".join(sorted(set(problems)))


def test_every_link_inside_the_docs_resolves() -> None:
    problems = []
    for page in sorted(DOCS.glob("*.md")):
        for target, anchor, written in relative_links(page):
            reason = broken(target, anchor)
            if reason:
                problems.append(f"docs/{page.name}: ({written}): {reason}")
    assert not problems, "broken links inside docs/:\n" + "\n".join(problems)


def test_every_page_is_listed_in_the_docs_index() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    listed = {target for target in MARKDOWN_LINK.findall(index)}
    missing = [page.name for page in sorted(DOCS.glob("*.md")) if page.name != "README.md" and page.name not in listed]
    assert not missing, f"docs/README.md does not list: {', '.join(missing)}"


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Buffer and merge", "buffer-and-merge"),
        ("Table `user_goal_progress`", "table-user_goal_progress"),
        ("`loadtest run`", "loadtest-run"),
        ("De-duplication", "de-duplication"),
        ("At 10x and 100x the load", "at-10x-and-100x-the-load"),
        ("Prerequisites and `locked`", "prerequisites-and-locked"),
    ],
)
def test_anchors_follow_githubs_rules(heading: str, anchor: str) -> None:
    assert github_anchor(heading) == anchor


def test_a_missing_page_or_anchor_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Flush\n\n```\n## not a heading\n```\n\n## Flush\n", encoding="utf-8")
    assert anchors_of(page.read_text(encoding="utf-8")) == {"title", "flush", "flush-1"}
    assert broken(page, "flush") is None
    assert broken(page, "flush-1") is None
    assert broken(page, "not-a-heading") is not None
    assert broken(tmp_path / "absent.md", None) is not None
    assert docs_references("see docs/events.md#flush and docs/cache.md") == [
        ("events.md", "flush"),
        ("cache.md", None),
    ]


def test_every_setting_has_a_row_in_the_configuration_page() -> None:
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [spec.name for spec in SPECS if f"`{spec.name}`" not in page]
    assert not missing, f"docs/configuration.md does not mention these settings: {', '.join(missing)}"


def test_the_configuration_page_shows_each_settings_default() -> None:
    rows: dict[str, list[str]] = {}
    for line in (DOCS / "configuration.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            for name in re.findall(r"`([a-z_0-9]+)`", cells[0]):
                rows.setdefault(name, cells)
    wrong = []
    for spec in SPECS:
        if spec.default is None or isinstance(spec.default, bool):
            continue  # no default, or a switch the page words as on/off
        cells = rows.get(spec.name, [])
        default = re.escape(str(spec.default))
        if len(cells) < 4 or not re.search(rf"(?<![\w.]){default}(?![\w.])", cells[3]):
            wrong.append(
                f"{spec.name} (default {spec.default!r}; the page's Default cell: {cells[3] if len(cells) > 3 else None!r})"
            )
    assert not wrong, "docs/configuration.md shows another default for: " + "; ".join(wrong)
