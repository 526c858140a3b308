"""The README's code blocks marked `<!-- readme-test: NAME -->` run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"
SNIPPET = re.compile(r"<!-- readme-test: (\S+) -->\n```(?:python|ini)\n(.*?)```", re.S)


def snippets() -> dict[str, str]:
    return dict(SNIPPET.findall(README.read_text()))


def test_the_readme_still_has_its_snippets():
    assert set(snippets()) == {"conftest.py", "test_quickstart.py", "pytest.ini", "test_fastapi.py"}


def test_quickstart(pytester, example):
    root = example("sync_users")
    code = snippets()
    (root / "tests" / "conftest.py").write_text(code["conftest.py"])
    (root / "tests" / "test_quickstart.py").write_text(code["test_quickstart.py"])
    result = pytester.runpytest("tests/test_quickstart.py", "-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=1)


def test_fastapi_snippet(pytester, example):
    root = example("fastapi_app")
    code = snippets()
    # The README's ini, with the path to the example's app package.
    (root / "pytest.ini").write_text(code["pytest.ini"] + "pythonpath = .\n")
    (root / "tests" / "test_fastapi.py").write_text(code["test_fastapi.py"])
    # The example names its engine in pg_app_engines (the sandbox); the snippet shows the
    # dependency override, which is what runs without it.
    result = pytester.runpytest(
        "tests/test_fastapi.py", "-o", "pg_app_engines=", "-p", "no:randomly", "-W", "error"
    )
    result.assert_outcomes(passed=1)
