"""docs/promises.md: every documented promise names tests, and every test it names exists.

A promise whose proof was renamed or deleted would otherwise keep being stated with nothing
behind it. The table is parsed here, and the named node ids are checked against what pytest
really collects (`pytest --collect-only -q` in a subprocess, on the files the table names).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMISES = ROOT / "docs" / "promises.md"
NODE = re.compile(r"`([\w./-]+\.py(?:::[\w\[\]-]+)+)`")


def rows() -> list[tuple[str, str, list[str]]]:
    """(promise, stated in, node ids) for every row of the table under '## Promises'."""
    text = PROMISES.read_text()
    assert "## Promises" in text, "docs/promises.md lost its table heading"
    table = text.split("## Promises", 1)[1]
    out = []
    for line in table.splitlines():
        line = line.strip()
        if not line.startswith("|") or re.fullmatch(r"\|[\s|:-]+\|", line) or line.startswith("| promise |"):
            continue
        promise, where, tests = (cell.strip() for cell in line.strip("|").rsplit("|", 2))
        out.append((promise, where, NODE.findall(tests)))
    return out


def collected(files: set[str]) -> set[str]:
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *sorted(files)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"collection failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
    return {line.strip() for line in result.stdout.splitlines() if "::" in line}


def test_the_table_parses_into_many_rows():
    table = rows()
    assert len(table) >= 40, len(table)
    assert all(promise and where for promise, where, _ in table)


def test_every_promise_names_a_test():
    missing = [promise for promise, _, tests in rows() if not tests]
    assert missing == [], f"promises without a test: {missing}"


def test_every_named_test_is_collected_by_pytest():
    table = rows()
    named = {node for _, _, tests in table for node in tests}
    nodes = collected({node.split("::")[0] for node in named})
    functions = {node.split("[")[0] for node in nodes}  # a parametrized test may be named without parameters
    unknown = sorted(node for node in named if node not in nodes and node not in functions)
    assert unknown == [], f"docs/promises.md names tests that pytest does not collect: {unknown}"


def test_the_check_itself_notices_a_renamed_test(tmp_path, monkeypatch):
    """A row naming a test that does not exist must be caught (this check cannot pass vacuously)."""
    fake = tmp_path / "promises.md"
    fake.write_text("## Promises\n\n| promise | stated in | tests |\n|---|---|---|\n"
                    "| a | README.md | `tests/test_promises.py::test_that_was_renamed` |\n"
                    "| b / c | README.md | |\n")
    monkeypatch.setattr(sys.modules[__name__], "PROMISES", fake)
    table = rows()
    assert [(p, t) for p, _, t in table] == [("a", ["tests/test_promises.py::test_that_was_renamed"]), ("b / c", [])]
    nodes = collected({"tests/test_promises.py"})
    assert "tests/test_promises.py::test_every_named_test_is_collected_by_pytest" in nodes
    assert "tests/test_promises.py::test_that_was_renamed" not in nodes
