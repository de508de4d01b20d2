"""Every reference in the code and the docs points at something in this repository.

A comment or doc that cites a file, a section, a numbered decision, a test or a module that was
moved, renamed or never existed sends the reader nowhere. These checks read every text file the
repository tracks and resolve each reference the way a reader would: paths against the tree,
"docs/x.md, "Heading"" against that file's headings, "docs/architecture.md, D<n>" against its
numbered decisions, "file.py::test" against the file's functions, dotted module names by import.
They need no broker and take a second or two.
"""
from __future__ import annotations

import importlib
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".py", ".md", ".sql", ".yml", ".yaml", ".toml", ".sh", ".cfg", ".service", ".txt"}
TEXT_NAMES = {"Makefile", "run"}  # .ci/run
SKIP_PREFIXES = ("tests/golden/",)  # event fixtures, no prose

# Paths that are written on purpose although they are not in the tree: what a command creates
# (ignored by git), and the file names of worked examples that tell the reader what to create.
NOT_IN_TREE = {
    "sql/target", "sql/target/cxj_dbt.duckdb", "sql/logs", "sql/dbt_packages",  # dbt's outputs
    "benchmarks/results", "benchmarks/results/throughput.json", "benchmarks/results/freshness.json",  # benchmark outputs
    "pipelines/sql",  # the wheel's copy of sql/ (pyproject.toml package-dir), built, never in the tree
    "sql/models/marts/mart_x.sql",  # README: "to add a mart, write ..."
    "sql/models/marts/mart_weekly_fcr_by_team.sql",  # docs/marts.md: the worked example
}
TOP = r"(?:docs|pipelines|transforms|tests|schemas|sql|infra|benchmarks)"
PATH = re.compile(rf"(?<![\w./-]){TOP}/[\w./-]*\w")
URL = re.compile(r"\w+://\S+")
BARE_PY = re.compile(r"(?<![\w./*<>-])([A-Za-z_]\w*\.py)\b")
HEADING_REF = re.compile(r"(docs/\w+\.md), \"([^\"]+)\"")
DECISION_REF = re.compile(r"architecture\.md, (D\d+)")
NODE_REF = re.compile(r"((?:tests|transforms|pipelines)/[\w/]+\.py)::(\w+)")
MODULE_REF = re.compile(r"(?<![\w./-])((?:pipelines|transforms|schemas)(?:\.[a-z_]\w*)+)")
NOT_MODULES = {"pipelines.sql"}  # the wheel's data folder for sql/ (pyproject.toml), not a module
OUTSIDE = re.compile(r"DESIGN\.md|DESIGN (?:decision|fact)|\(DESIGN[:)]|shared/DESIGN")


@lru_cache(maxsize=1)
def text_files() -> tuple[Path, ...]:
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                                text=True, check=True, timeout=60).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree
        skip = {".git", ".venv", "build", "data", ".cxj", "__pycache__", ".pytest_cache", ".hypothesis", "target", "logs"}
        listed = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                  if p.is_file() and not skip.intersection(p.relative_to(ROOT).parts)]
    files = []
    for name in sorted(set(listed)):
        path = ROOT / name
        if name.startswith(SKIP_PREFIXES) or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES:
            files.append(path)
    return tuple(files)


def lines_of(path: Path) -> list[tuple[int, str]]:
    return [(n, URL.sub("", line)) for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)]


def where(path: Path, n: int) -> str:
    return f"{path.relative_to(ROOT)}:{n}"


def references(pattern: re.Pattern[str]) -> list[tuple[str, re.Match[str]]]:
    found = []
    for path in text_files():
        if path == Path(__file__).resolve():
            continue  # this file's patterns and examples are not references
        for n, line in lines_of(path):
            found.extend((where(path, n), m) for m in pattern.finditer(line))
    return found


def test_the_scan_sees_the_repository():
    names = {str(p.relative_to(ROOT)) for p in text_files()}
    assert {"README.md", "docs/architecture.md", "pipelines/cli/main.py", "sql/models/staging/stg_events.sql", "Makefile"} <= names
    assert len(references(PATH)) > 100 and len(references(DECISION_REF)) >= 8


def in_tree(path: str) -> bool:
    """The path exists; a path inside the wheel's pipelines/sql/ exists when its source under sql/ does."""
    if path.startswith("pipelines/sql/"):
        path = path.removeprefix("pipelines/")
    return (ROOT / path).exists() or path in NOT_IN_TREE or path.startswith("benchmarks/results/")  # benchmark outputs (ignored by git)


def test_every_path_named_exists():
    missing = [f"{at}: {m.group(0)}" for at, m in references(PATH) if not in_tree(m.group(0).rstrip("."))]
    assert not missing, "references to paths that do not exist:\n" + "\n".join(missing)


def test_every_module_file_named_exists_somewhere():
    """A bare `store.py` in prose is fine only while some file of that name exists."""
    names = {p.name for p in ROOT.rglob("*.py") if ".venv" not in p.parts}
    missing = [f"{at}: {m.group(1)}" for at, m in references(BARE_PY) if m.group(1) not in names]
    assert not missing, "module files that exist nowhere:\n" + "\n".join(missing)


def headings(doc: str) -> list[str]:
    return [line.lstrip("#").strip() for line in (ROOT / doc).read_text().splitlines() if line.startswith("#")]


def test_every_section_named_exists():
    """`docs/x.md, "Heading"` names a heading of that file (a heading that starts with the text)."""
    refs = references(HEADING_REF)
    assert refs
    missing = [f"{at}: {m.group(0)}" for at, m in refs
               if not (ROOT / m.group(1)).is_file() or not any(h.startswith(m.group(2)) for h in headings(m.group(1)))]
    assert not missing, "references to sections that do not exist:\n" + "\n".join(missing)


def decisions() -> dict[str, str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return dict(re.findall(r"^\*\*(D\d+)\. ([^*]+)\*\*", text, flags=re.M))


def test_decisions_are_numbered_one_by_one_and_every_cited_one_exists():
    numbered = decisions()
    assert list(numbered) == [f"D{i}" for i in range(1, len(numbered) + 1)], list(numbered)
    assert len(numbered) >= 12
    missing = [f"{at}: {m.group(0)}" for at, m in references(DECISION_REF) if m.group(1) not in numbered]
    assert not missing, "citations of decisions docs/architecture.md does not have:\n" + "\n".join(missing)


def test_nothing_cites_a_document_outside_the_repository():
    found = []
    for path in text_files():
        if path == Path(__file__).resolve():
            continue
        for n, line in lines_of(path):
            if OUTSIDE.search(line):
                found.append(f"{where(path, n)}: {line.strip()}")
    assert not found, "cite docs/architecture.md (D1-D12) or docs/metrics.md instead:\n" + "\n".join(found)


def test_every_test_named_exists():
    """`tests/test_x.py::test_name` (the proofs the docs cite) names a function of that file."""
    refs = references(NODE_REF)
    assert len(refs) > 50
    missing = []
    for at, m in refs:
        path = ROOT / m.group(1)
        if at.startswith("tests/test_promises.py"):
            continue  # that test feeds its parser a made-up node on purpose
        if not path.is_file() or not re.search(rf"^\s*(?:async )?def {m.group(2)}\b|^class {m.group(2)}\b",
                                               path.read_text(), flags=re.M):
            missing.append(f"{at}: {m.group(0)}")
    assert not missing, "tests that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("dotted", sorted({m.group(1) for _, m in references(MODULE_REF)} - NOT_MODULES))
def test_every_dotted_module_name_resolves(dotted):
    """`pipelines.storage.reader`, `pipelines.connect()`: a module, or an attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            assert hasattr(target, name), f"{dotted}: {'.'.join(parts[:cut])} has no {name}"
            target = getattr(target, name)
        return
    pytest.fail(f"{dotted} is no module")


def test_every_model_cites_the_yaml_beside_it():
    """Each model file says where its documentation lives: the YAML file next to it."""
    models = sorted((ROOT / "sql" / "models").rglob("*.sql"))
    assert len(models) > 10
    for model in models:
        cited = re.findall(r"documented in (_\w+\.yml)", model.read_text())
        assert cited and all((model.parent / name).is_file() for name in cited), model.relative_to(ROOT)


def test_the_dead_letter_reasons_documented_are_the_ones_in_the_code():
    """docs/architecture.md, "Bad input" lists every stable reason code of transforms/parse.py, and no other."""
    from transforms.parse import REASONS

    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    codes = section.split("reason\ncode (", 1)[1].split(")", 1)[0] + section.split("the driver adds", 1)[1].split(" for ", 1)[0]
    named = set(re.findall(r"`(\w+)`", codes))
    assert named == set(REASONS), (sorted(named - set(REASONS)), sorted(set(REASONS) - named))
