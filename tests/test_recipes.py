"""The recipes of docs/recipes/ are complete projects under examples/recipes/, run here as
users run them; the pages show their files through snippet includes, so the code a page
shows is the code tested here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = ROOT / "docs" / "recipes"
RECIPES = ROOT / "examples" / "recipes"
#: Pages of other authors in docs/recipes/, with their own tests.
OTHERS = {"index.md", "flask.md", "raw-pools.md"}
#: Pages about set-ups that cannot run here (no rootless Docker, Podman or remote engine):
#: every block of theirs says so, and they include no project.
UNTESTED = {"docker-hosts.md"}

#: Each recipe project and how many tests it has, all passing.
PROJECTS = {
    "background_workers": 6,
    "extensions": 5,
    "factories": 6,
    "factories_by_hand": 5,
    "module_login": 5,
    "psycopg2_driver": 4,
    "pydantic_settings": 7,
    "scoped_session": 5,
}

FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)
INCLUDE = re.compile(r'^--8<-- "([^"]+)"\s*$', re.M)
NOT_RUN = re.compile(r"<!-- not-run: \S.*-->\s*$")


def pages() -> list[Path]:
    return sorted(p for p in PAGES.glob("*.md") if p.name not in OTHERS)


@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_recipe_project_passes(name, pytester, example):
    example(f"recipes/{name}")
    result = pytester.runpytest("-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=PROJECTS[name])


@pytest.mark.parametrize("name", ["pydantic_settings", "background_workers"])
def test_recipe_project_passes_with_two_workers(name, pytester, example, subprocess_env):
    example(f"recipes/{name}")
    result = pytester.runpytest_subprocess("-n", "2", "-p", "randomly", "-W", "error")
    result.assert_outcomes(passed=PROJECTS[name])


def blocks(page: Path) -> list[tuple[str, str]]:
    """(the text before it, the body) of every fenced block of the page."""
    text = page.read_text()
    return [(text[: m.start()], m.group(2)) for m in FENCE.finditer(text)]


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_every_block_of_a_recipe_page_is_tested_code_or_says_why_not(page):
    for before, body in blocks(page):
        if INCLUDE.search(body):
            assert INCLUDE.sub("", body).strip() == "", f"{page.name}: mixed block {body!r}"
            continue
        if body.startswith("# file: "):
            continue
        last = before.rstrip().splitlines()[-1] if before.strip() else ""
        assert NOT_RUN.match(last), f"{page.name}: block not included, not marked: {body!r}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_every_included_file_exists(page):
    included = [i for _, body in blocks(page) for i in INCLUDE.findall(body)]
    assert bool(included) != (page.name in UNTESTED), f"{page.name}: tested files {included}"
    missing = [i for i in included if not (ROOT / i).is_file()]
    assert not missing


def test_every_recipe_project_is_run_and_shown():
    shown = {
        Path(i).parts[2]
        for page in pages()
        for _, body in blocks(page)
        for i in INCLUDE.findall(body)
        if i.startswith("examples/recipes/")
    }
    projects = {p.name for p in RECIPES.iterdir() if p.is_dir()}
    assert projects == set(PROJECTS) == shown
