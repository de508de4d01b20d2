"""The SQL models of sql/models (a dbt project), rendered into plain DuckDB views.

The staging -> core -> marts views have ONE definition: the dbt model files in
``sql/models/<layer>/<name>.sql`` (a SELECT that names its inputs with ``{{ ref('model') }}`` and
``{{ source('cxj', 'table') }}``) and their YAML docs next to them. Two consumers use them:

* dbt (``dbt build`` in sql/) compiles, documents and tests them like any dbt project;
* the store and the read replica create them as views named after the file, so someone who
  only queries (`cxj sql`, ``connect()``, `cxj report`, a BI tool) never needs a dbt step.

For the second, this module substitutes ``ref('x')`` -> ``x`` and ``source('cxj', 'y')`` -> ``y``
and nothing else: a model that needs more Jinja than that is refused with a clear error (a test
renders every file), so the two never drift apart. Views are created in dependency order
(from the refs), and every column of every table and view gets a ``COMMENT ON`` from the same
YAML descriptions dbt shows in its docs.
"""
from __future__ import annotations

import graphlib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.storage.quoting import ident, sql_literal


def _sql_dir() -> Path:
    """sql/, the dbt project at the top of the repository: a source checkout reads it in place;
    a wheel carries it inside the package as pipelines/sql/ (pyproject.toml's package-dir), so an
    installed `cxj` needs no checkout. The one place that decides where the SQL files are."""
    package = Path(__file__).resolve().parents[1]
    shipped = package / "sql"
    return shipped if (shipped / "schema.sql").is_file() else package.parent / "sql"


SQL_DIR = _sql_dir()
SCHEMA_SQL = SQL_DIR / "schema.sql"  # the landing tables, created before the model views
MODELS_DIR = SQL_DIR / "models"
# The model layers (folders under sql/models) and their order: a model may ref only models of its
# own or an earlier layer; staging and ops read the landing tables (source()) and nothing else.
LAYER_ORDER = {"staging": 0, "ops": 0, "core": 1, "marts": 2}
SOURCE_NAME = "cxj"  # the dbt source that declares the landing tables

_REF = re.compile(r"\{\{\s*ref\(\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]\s*\)\s*\}\}")
_SOURCE = re.compile(
    r"\{\{\s*source\(\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]\s*,\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]\s*\)\s*\}\}"
)
_JINJA = re.compile(r"\{\{|\{%|\{#")


class ModelError(ValueError):
    """A model file the store cannot turn into a view (one line, names the file)."""


@dataclass(frozen=True)
class Model:
    name: str          # the view's name: the file name without .sql
    layer: str         # folder under sql/models (staging, core, marts, ops, ...)
    path: Path
    select: str        # the rendered SELECT, plain DuckDB SQL
    refs: frozenset[str]
    sources: frozenset[str]


def render(text: str, path: Path | str = "<model>") -> tuple[str, set[str], set[str]]:
    """(plain SQL, models it refs, landing tables it reads) for one model file's text."""
    refs: set[str] = set()
    sources: set[str] = set()

    def ref(match: re.Match[str]) -> str:
        refs.add(match.group(1))
        return match.group(1)

    def source(match: re.Match[str]) -> str:
        if match.group(1) != SOURCE_NAME:
            raise ModelError(f"{path}: unknown source {match.group(1)!r} (only {SOURCE_NAME!r} is declared)")
        sources.add(match.group(2))
        return match.group(2)

    sql = _SOURCE.sub(source, _REF.sub(ref, text))
    leftover = _JINJA.search(sql)
    if leftover:
        line = sql.count("\n", 0, leftover.start()) + 1
        raise ModelError(
            f"{path}:{line}: only {{{{ ref('model') }}}} and {{{{ source('{SOURCE_NAME}', 'table') }}}} are allowed "
            "in model files (the store creates the views without dbt)"
        )
    sql = sql.strip().rstrip(";").rstrip()
    if ";" in _strip_comments_and_strings(sql):
        raise ModelError(f"{path}: a model is one statement (found ';')")
    return sql, refs, sources


def _strip_comments_and_strings(sql: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"", " ", sql, flags=re.S)


def load_models(models_dir: Path = MODELS_DIR) -> list[Model]:
    """Every model under ``models_dir``, in dependency order (a model after everything it refs)."""
    found: dict[str, Model] = {}
    for path in sorted(models_dir.rglob("*.sql")):
        name = path.stem
        if name in found:
            raise ModelError(f"{path}: a model named {name!r} exists twice ({found[name].path})")
        select, refs, sources = render(path.read_text(encoding="utf-8"), path)
        layer = path.parent.relative_to(models_dir).parts[0] if path.parent != models_dir else ""
        found[name] = Model(name, layer, path, select, frozenset(refs), frozenset(sources))
    for model in found.values():
        missing = sorted(model.refs - found.keys())
        if missing:
            raise ModelError(f"{model.path}: ref() to unknown model(s) {', '.join(missing)}")
    sorter = graphlib.TopologicalSorter({m.name: m.refs for m in found.values()})
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        raise ModelError(f"models ref each other in a cycle: {' -> '.join(exc.args[1])}") from None
    ordered: list[Model] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())  # sorted: the same order on every machine
        ordered.extend(found[name] for name in ready)
        sorter.done(*ready)
    return ordered


# ---------------------------------------------------------------- docs (YAML)


@dataclass(frozen=True)
class Docs:
    """Descriptions from the dbt YAML files: relation -> text, (relation, column) -> text."""

    relations: dict[str, str]
    columns: dict[tuple[str, str], str]
    tables: frozenset[str]  # relations declared as landing tables (the dbt source)


def _text(node: dict[str, Any]) -> str:
    return " ".join(str(node.get("description") or "").split())


def load_docs(models_dir: Path = MODELS_DIR) -> Docs:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    relations: dict[str, str] = {}
    columns: dict[tuple[str, str], str] = {}
    tables: set[str] = set()
    for path in sorted(models_dir.rglob("*.yml")):
        try:
            doc = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
            _read_docs(doc, relations, columns, tables)
        except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
            reason = " ".join(str(exc).split()) if not isinstance(exc, KeyError) else f"an entry without {exc}"
            raise ModelError(f"{path}: not a valid dbt YAML file ({reason})") from None
    return Docs(relations, columns, frozenset(tables))


def _read_docs(doc: dict[str, Any], relations: dict[str, str], columns: dict[tuple[str, str], str],
               tables: set[str]) -> None:
    """Adds one YAML document's model and source-table descriptions (dbt's schema-file layout)."""
    entries: list[tuple[dict[str, Any], bool]] = [(m, False) for m in doc.get("models") or []]
    for source in doc.get("sources") or []:
        if source.get("name") == SOURCE_NAME:
            entries.extend((t, True) for t in source.get("tables") or [])
    for node, is_table in entries:
        name = str(node["name"])
        relations[name] = _text(node)
        if is_table:
            tables.add(name)
        for column in node.get("columns") or []:
            columns[(name, str(column["name"]))] = _text(column)


def comment_statements(docs: Docs, relations: dict[str, str], view_columns: bool = True) -> list[str]:
    """COMMENT ON statements for ``relations`` (name -> 'TABLE' | 'VIEW') that have docs.

    ``view_columns=False`` leaves out comments on view columns: DuckLake (the read replica)
    stores comments on tables, their columns and views, but not on a view's columns."""
    statements: list[str] = []
    for name, kind in relations.items():
        if docs.relations.get(name):
            statements.append(f"COMMENT ON {kind} {ident(name)} IS {sql_literal(docs.relations[name])}")
    for (relation, column), text in docs.columns.items():
        if relation in relations and text and (view_columns or relations[relation] != "VIEW"):
            statements.append(f"COMMENT ON COLUMN {ident(relation)}.{ident(column)} IS {sql_literal(text)}")
    return statements


def catalog_statements(models_dir: Path = MODELS_DIR, view_columns: bool = True) -> list[str]:
    """Creates every model view (dependency order) and comments every documented table, view
    and column. Run after sql/schema.sql, in the database file and in the replica alike."""
    models = load_models(models_dir)
    docs = load_docs(models_dir)
    statements = [f"CREATE OR REPLACE VIEW {ident(m.name)} AS\n{m.select}" for m in models]
    relations = {t: "TABLE" for t in sorted(docs.tables)}
    relations.update({m.name: "VIEW" for m in models})
    return statements + comment_statements(docs, relations, view_columns)


def fingerprint(statements: list[str]) -> str:
    digest = hashlib.sha256()
    for statement in statements:
        digest.update(statement.encode() + b"\0")
    return digest.hexdigest()[:16]
