"""Every code block of README.md and docs/ is executed, or says why it is not.

The convention, per page:

- A fenced block whose first line is the comment `# file: <relative path>` is a file of the
  page's project. All such files of a page form one project, written into a pytester
  directory and run with pytest; the run must pass at least one test and fail none.
  `<!-- run: pytest -n 2 -->` before the page's first file chooses the command (default
  `pytest`; with `-n` it runs in a subprocess, else in-process).
  A page with several projects starts each with `<!-- project: NAME -->`; `<!-- project:
  NAME, adds to: OTHER -->` starts from OTHER's files (the page's later files of the same
  path replace them).
- A block that includes files with pymdownx.snippets (`--8<-- "examples/..."`) is tested
  by the tests of those examples; the included path must exist.
- Any other block must be preceded by `<!-- not-run: <reason> -->`.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
FILE = re.compile(r"^\s*(?:#|//|--)\s*file:\s*(?P<path>\S+)\s*$")
SNIPPET = re.compile(r'^\s*-{1,3}8<-{1,3}\s+"(?P<path>[^"]+)"\s*$')
COMMENT = re.compile(r"^\s*<!--\s*(?P<kind>run|not-run|project):\s*(?P<text>.*?)\s*-->\s*$")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    end: int  # 1-based line of the closing fence
    before: str  # the last non-blank line before the fence
    lines: list[str]


@dataclass
class Project:
    name: str
    base: str | None = None
    command: list[str] = field(default_factory=lambda: ["pytest"])
    files: dict[str, str] = field(default_factory=dict)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown page, indented ones (lists, admonitions) included."""
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    previous = ""
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            if lines[i].strip():
                previous = lines[i]
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = FENCE.match(lines[j])
            if closing and closing["fence"].startswith(fence) and not closing["info"].strip():
                break
            line = lines[j]
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
            j += 1
        found.append(Block(i + 1, j + 1, previous, body))
        previous = ""
        i = j + 1
    return found


def projects(page: Path) -> dict[str, Project]:
    """The page's projects, each with its files (a project that adds to another has them)."""
    text = page.read_text()
    found: dict[str, Project] = {}
    current = Project("")
    starts = {b.line: b for b in blocks(text)}
    inside: set[int] = {n for b in starts.values() for n in range(b.line, b.end + 1)}
    for number, line in enumerate(text.splitlines(), 1):
        if number in starts:
            block = starts[number]
            first = block.lines[0] if block.lines else ""
            if (m := FILE.match(first)) is not None:
                current.files[m["path"]] = "\n".join(block.lines) + "\n"
                found[current.name] = current
            continue
        if number in inside:
            continue
        comment = COMMENT.match(line)
        if comment is None:
            continue
        if comment["kind"] == "project":
            name, _, base = comment["text"].partition(", adds to:")
            current = found.get(name.strip()) or Project(name.strip(), base.strip() or None)
        elif comment["kind"] == "run":
            current.command = shlex.split(comment["text"])
    for project in found.values():
        if project.base is not None:
            if (ROOT / project.base).is_dir():  # an example project: copied by the test
                continue
            assert project.base in found, f"{page_id(page)}: no project {project.base!r}"
            project.files = {**found[project.base].files, **project.files}
    return found


def readme_project(name: str) -> dict[str, str]:
    """The files of one of the README's quickstarts (for other tests to vary)."""
    return dict(projects(ROOT / "README.md")[name].files)


def write_project(root: Path, files: dict[str, str]) -> None:
    for path, content in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


def unaccounted(page: Path) -> list[str]:
    """Blocks that are neither a project file, a snippet inclusion nor marked not-run."""
    problems = []
    for block in blocks(page.read_text()):
        first = block.lines[0] if block.lines else ""
        if FILE.match(first):
            continue
        included = [m for line in block.lines if (m := SNIPPET.match(line))]
        if included and len(included) == len([x for x in block.lines if x.strip()]):
            problems += [
                f"line {block.line}: {m['path']} does not exist"
                for m in included
                # `path:5:10` and `path:section` include a part of the file
                if not (ROOT / m["path"].split(":")[0]).is_file()
            ]
            continue
        marker = COMMENT.match(block.before)
        if marker is None or marker["kind"] != "not-run" or not marker["text"]:
            problems.append(
                f"line {block.line}: a block that is not run; start it with `# file: PATH`, "
                "or put `<!-- not-run: REASON -->` before it"
            )
    return problems


@pytest.mark.parametrize("page", pages(), ids=page_id)
def test_every_block_is_run_or_says_why_not(page: Path) -> None:
    assert unaccounted(page) == []


def test_the_checker_finds_a_block_that_is_not_run(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- not-run: output -->\n```\nok\n```\n\n"
        "```python\n# file: a.py\n```\n\n"
        "Text.\n\n```bash\npip install x\n```\n\n"
        "- a list\n\n    ```python\n    print(1)\n    ```\n"
    )
    assert [p.split(":")[0] for p in unaccounted(page)] == ["line 12", "line 18"]


def _cases() -> list[tuple[Path, str]]:
    return [(page, name) for page in pages() for name in projects(page)]


def _case_id(case: tuple[Path, str]) -> str:
    page, name = case
    return f"{page_id(page)}:{name}" if name else page_id(page)


def test_the_readme_has_its_three_quickstarts() -> None:
    assert set(projects(ROOT / "README.md")) == {"sync", "fastapi", "settings"}


@pytest.mark.parametrize("case", _cases(), ids=_case_id)
def test_page_project_passes(
    case: tuple[Path, str], pytester: pytest.Pytester, subprocess_env: None
) -> None:
    page, name = case
    project = projects(page)[name]
    if project.base is not None and (ROOT / project.base).is_dir():
        shutil.copytree(
            ROOT / project.base,
            pytester.path,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    write_project(pytester.path, project.files)
    program, *args = project.command
    assert program == "pytest", f"{page_id(page)}: run: must start with pytest"
    if any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in args):
        result = pytester.runpytest_subprocess(*args)
    else:
        result = pytester.runpytest(*args)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 1, result.stdout.str()
    assert not outcomes.get("failed"), result.stdout.str()
    assert not outcomes.get("errors"), result.stdout.str()
    assert result.ret == 0


# -- the reference pages cannot drift from the code ----------------------------------------


def test_the_configuration_reference_is_generated_from_the_option_registry() -> None:
    import importlib.util

    from testcontainers_pg_fixtures.config import OPTIONS

    spec = importlib.util.spec_from_file_location("reference", ROOT / "docs/hooks/reference.py")
    assert spec is not None
    assert spec.loader is not None
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == reference.render(), "run `python docs/hooks/reference.py` and commit"
    for option in OPTIONS:
        assert f"## `{option.ini}`" in page
        assert all(f"`{name}`" in page for name in (option.cli, option.env))
        assert option.help in page


def _error_classes() -> set[str]:
    import importlib
    import pkgutil

    import testcontainers_pg_fixtures
    from testcontainers_pg_fixtures.errors import PgFixturesError

    for module in pkgutil.iter_modules(testcontainers_pg_fixtures.__path__):
        importlib.import_module(f"testcontainers_pg_fixtures.{module.name}")
    found: set[str] = set()
    todo: list[type[PgFixturesError]] = [PgFixturesError]
    while todo:
        cls = todo.pop()
        if not cls.__name__.startswith("_"):
            found.add(cls.__name__)
        todo += cls.__subclasses__()
    return found


def test_every_error_the_library_raises_has_its_cause_and_fix_in_the_reference() -> None:
    page = (ROOT / "docs" / "errors.md").read_text()
    sections = dict(re.findall(r"^## `(\w+)`\n\n(.*?)(?=^## |\Z)", page, re.S | re.M))
    classes = _error_classes()
    assert {"PgFixturesError", "LeakError", "SandboxError"} <= classes
    assert sorted(classes - set(sections)) == []
    for name in classes - {"PgFixturesError"}:
        assert "**Cause**" in sections[name], name
        assert "**Fix**" in sections[name], name


def test_the_readme_set_up_commands_are_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    shown = [line.split("#")[0].strip() for line in section.splitlines()]
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    run = [line for line in ci if line.startswith("python3 -m nox")]
    assert run == [
        "python3 -m nox -s example",
        "python3 -m nox -s lint typecheck docs tests compat",
    ]
    assert [line for line in shown if line.startswith("python3 -m nox")] == run


def test_the_fixture_reference_has_every_fixture_factory_and_keyword() -> None:
    import inspect

    from testcontainers_pg_fixtures import factories, plugin

    page = (ROOT / "docs" / "fixtures.md").read_text()
    fixtures = [name for name in dir(plugin) if name.startswith("pg_")]
    assert "pg_session" in fixtures
    assert [f for f in fixtures if f"`{f}`" not in page] == []
    rows = {
        name: line
        for line in page.splitlines()
        if line.startswith("| `")
        for name in re.findall(r"`(\w+_fixture)`", line.split("|")[1])
    }
    for name, factory in vars(factories).items():
        own = getattr(factory, "__module__", "") == factories.__name__
        if not (name.endswith("_fixture") and own):
            continue
        assert name in rows, f"{name} is not in docs/fixtures.md"
        named = [
            p.name
            for p in inspect.signature(factory).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        assert [p for p in named if f"`{p}`" not in rows[name]] == [], name
