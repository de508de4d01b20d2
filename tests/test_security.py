"""Secrets never reach logs or output; SQL text is never built from unchecked input."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.kafka.settings import KafkaSettings
from tests.support import send_events, table

SECRET = "s3cret-Value-42"
ROOT = Path(__file__).resolve().parent.parent


def test_describe_hides_passwords():
    settings = KafkaSettings(sasl_plain_username="cxj", sasl_plain_password=SECRET, ssl_password=SECRET)
    assert SECRET not in settings.describe()
    assert SECRET not in repr(settings)
    assert settings.client_kwargs()["sasl_plain_password"] == SECRET  # but it does reach kafka-python


def test_commands_never_print_the_sasl_password(tmp_path, broker):
    """Secrets stay out of every output, and a SASL connection the broker cannot serve fails with
    the documented exit code and exactly one line.

    What could not be exercised here: an *authenticated* connection. The local broker (Tansu
    0.6) supports SCRAM only with `--authentication` and users kept in its storage; with its
    memory storage (the only one available without Postgres or S3) a user can be created only
    over an already authenticated connection, so no client can ever authenticate. What runs is
    the full secure-connection path up to the SASL handshake, which the plain local broker
    refuses (kafka-python: UnsupportedSaslMechanismError).
    """
    env = dict(os.environ, CXJ_SASL_PASSWORD=SECRET, CXJ_SSL_PASSWORD=SECRET, CXJ_REPLICA="off")
    servers = broker.bootstrap_servers
    sasl = ["--bootstrap-servers", servers, "--security-protocol", "SASL_PLAINTEXT",
            "--sasl-mechanism", "PLAIN", "--sasl-username", "cxj"]
    db = str(tmp_path / "s.duckdb")
    # the line names the cause the client logged (the broker refuses the mechanism), also without --verbose
    failure = (f"cannot reach Kafka at {servers}: KafkaTimeoutError: Unable to bootstrap from ['{servers}']; cause: the broker "
               "does not accept SASL mechanism PLAIN on this listener (check --sasl-mechanism and --security-protocol) "
               "(gave up after 1s)")
    for command in (["run", "--once", "--broker-timeout", "1s"], ["run", "--once", "--verbose", "--broker-timeout", "1s"],
                    ["run", "--once", "--log-format", "json", "--broker-timeout", "1s"], ["status"]):
        result = subprocess.run([sys.executable, "-m", "pipelines.cli", *command, "--db", db, *sasl],
                                capture_output=True, text=True, env=env, timeout=120)
        output = result.stdout + result.stderr
        assert SECRET not in output, command
        assert "Traceback" not in output, command
        if command[0] == "status":  # CRIT: the broker cannot be read
            assert result.returncode == 2, output
            assert f"  - broker unreachable: {failure.removesuffix(' (gave up after 1s)')}" in result.stdout.splitlines(), output
            continue
        assert result.returncode == 3, (command, output)  # 3 = broker unreachable
        if "--log-format" in command:
            records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
            assert [(r["level"], r["logger"], r["message"]) for r in records if r["level"] == "error"] == [
                ("error", "cxj.run", failure)], output
            assert "credentials=***" in records[0]["message"] and "sasl_plain_username=cxj" in records[0]["message"]
            continue
        cxj_errors = [line for line in result.stderr.splitlines() if " ERROR " in line and "cannot reach Kafka" in line]
        assert [line.split(" ERROR ", 1)[1].strip() for line in cxj_errors] == [failure], output
        if "--verbose" in command:  # the client's own log names the handshake failure
            assert "UnsupportedSaslMechanismError" in result.stderr, output
        else:
            assert len([line for line in result.stderr.splitlines() if " ERROR " in line]) == 1, output


# What may stand inside {...} of an f-string holding SQL in pipelines/, checked on the syntax tree:
# - calls of the quoting helpers (sql_literal, ident) and int(): safe whatever their argument;
# - _ts()/_ms_ts() of a literal column name; module constants bound to a literal;
#   a conditional choosing between such values;
# - anything else only where it is reviewed: file, function AND expression, with the reason it is
#   safe. The same name in a new place, or a new expression, fails until someone reviews it, and
#   a reviewed place that no longer exists fails too (the list cannot rot).
# Why each value interpolated into SQL in storage/shared_lake.py is safe (placed per function below).
LAKE_REASONS = {
    "self.source": "ident() of current_database(), set in Replica.__init__",
    "source": "SharedLake.source: ident() of current_database()",
    "self._mine": "WRITER_COLUMN = sql_literal(writer id), set in _open",
    "mine": "self._mine: WRITER_COLUMN = sql_literal(writer id), set in _open",
    "writer": "sql_literal(self.writer_id) in the same function",
    "table": "loop over the module tuples TABLES/APPENDED/REPLACED/PER_CUSTOMER, or TABLES at _columns' call sites",
    "database": "self.source (ident()) or the constant LAKE_ALIAS at _columns' call sites",
    "window": "SQL text built in the same function from int batch ids",
    "touched": "_touched(): SQL text from self.source and the int window",
    "replaced": "SQL text built in the same function from self.source and the int window",
    "found": "SQL text built in the same function from self.source, self._mine and the int window",
    "options_sql": "joined in the same function from literals and a DATA_PATH built with sql_literal",
    "lake": "sql_literal(LAKE_ALIAS) in the same function",
}
QUOTING = {"sql_literal", "ident", "int", "self._like"}  # storage/quoting.py, sql_shell.py: doubling quotes
_TABLE_NAMES = "loop over / argument from the module's TABLES mapping (fixed table names)"
_TOUCHED = "_touched_rows(): rowid BETWEEN of int() bounds, an int row count, and a literal customer filter"
_SELECT_LIST = "select_list(): ident()-quoted column names of a TABLES schema and fixed expressions"
REVIEWED = {
    "streaming/lake_store.py:attach_statement": {
        "', '.join(options)": "DATA_PATH built with sql_literal, and fixed option keywords with an int constant",
    },
    "streaming/lake_store.py:_open_once": {"table": _TABLE_NAMES, "select_list(table)": _SELECT_LIST},
    "streaming/lake_store.py:_stored_events": {
        "columns": "ident()-quoted names of EVENT_SCHEMA's fields",
        "where": "a column name literal at every call site (customer_id / event_id)",
    },
    "streaming/lake_store.py:_replace_events": {"select_list('events')": _SELECT_LIST},
    "streaming/lake_store.py:_replace_by_coordinates": {
        "table": _TABLE_NAMES, "select_list(table)": _SELECT_LIST,
        "key": "a fixed expression over quoted coordinate columns",
    },
    "streaming/lake_store.py:_replace_customers": {"table": _TABLE_NAMES, "select_list(table)": _SELECT_LIST},
    "streaming/lake_store.py:counts": {"t": _TABLE_NAMES},
    "streaming/lake_store.py:resume_offsets": {
        "t": "loop over a literal tuple of table names",
        "key_union": "SQL text built in resume_offsets() from ALIAS and a literal tuple of table names",
    },
    "streaming/lake_store_test.py:tables": {
        "table": _TABLE_NAMES,
        "', '.join((chr(34) + c + chr(34) for c in columns))": "column names of a TABLES schema, double-quoted",
    },
    "storage/replica.py:attach_sql": {"', '.join(options)": "options are literals and a DATA_PATH built with sql_literal"},
    "storage/replica.py:publish": {
        "self.source": "ident() of current_database(), set in __init__",
        "window": "SQL text built in publish() from int batch ids",
        "replaced": "SQL text built in publish() from self.source and the window",
        "table": "loop over the module tuples APPENDED/REPLACED/PER_CUSTOMER",
        "touched": "SQL text built in publish() from self.source and int batch ids",
    },
    "storage/replica.py:changed_journeys": {
        "source": "Replica.source at its one call site: ident() of current_database()",
        "window": "the publish's window, built from int batch ids",
    },
    "storage/replica.py:_publish_journeys": {
        "changed_journeys(self.source, window)": "changed_journeys(): SQL text from ident() and the int window",
        "self.source": "ident() of current_database(), set in __init__",
        "table": "loop over the module tuple PER_CUSTOMER",
        "ids": "SQL text built in the same function from the constant CHANGED_TABLE",
        "old_rows": "'batch_id IN (' and str(int()) of each previous batch id, same function, or nothing",
        "mine + ' AND ' if mine else ''": "SharedLake._mine: WRITER_COLUMN = sql_literal(writer id), or nothing",
        "writer_column": "SharedLake: sql_literal(writer id) AS the constant WRITER_COLUMN, or nothing",
        "columns": "SQL text built in the same function from writer_column (above) or a literal",
        "window": "the publish's window: a batch_id range of two ints, built by publish() / _publish_once()",
    },
    "storage/replica.py:_merge_and_rewrite": {"lake": "sql_literal(LAKE_ALIAS) in the same function",
                                              "max_file_size": "the int constants MERGE_TINY, MERGE_SMALL or MERGE_LARGE"},
    "storage/models_test.py:sql_type_rank": {"case.group(1)": "the CASE expression read from our own model file stg_events.sql"},
    "storage/store.py:_load_staged": {
        "name": "temp table names are string literals at every call site (staged_events, staged_links, ...)",
        "source": "read_parquet([...]) of staged paths, each quoted with sql_literal in the same function",
    },
    "storage/store.py:_temp_from_query": {
        "name": "temp table names are string literals at every call site (here and through _temp_from_arrow)",
        "query": "_SNAPSHOT (module text) formatted with _AFTER (module text) or _touched_rows() results ("
                 + _TOUCHED + "), or the literal 'SELECT * FROM cxj_arrow_input' of _temp_from_arrow",
    },
    "storage/revision_sql.py:insert_revisions": {
        "flags": "built in the same function from ident()-quoted column names and fixed text",
        "names": "built in the same function from sql_literal()-quoted column names and ident()-quoted flags",
        "_flag(c)": "_flag(): ident() of 'inc_' and a column name",
        "MAX_TRIGGER_IDS": "the int literal constant transforms.revisions.MAX_TRIGGER_IDS",
        "after_values": "built in the same function from ident()-quoted column names and _after() names",
        "_json_object(columns, lambda c: ident(c.name))": "_json_object: ident()/sql_literal()-quoted column names, "
                                                          "json_value() fixed text",
        "_json_object(columns, _after)": "_json_object: ident()/sql_literal()-quoted column names (_after(): ident() of '_after_' "
                                         "and a column name), json_value() fixed text",
    },
    "storage/revision_sql_test.py:test_timestamps_are_written_as_pythons_isoformat": {
        "json_value('t', 'TIMESTAMP WITH TIME ZONE')": "json_value() of a literal column name",
        "json_value('NULL::TIMESTAMPTZ', 'TIMESTAMP WITH TIME ZONE')": "json_value() of a literal NULL",
    },
    "storage/store.py:_land_service_metrics": {
        "touched_rows['journey_metrics']": "_touched_rows() results from land(): " + _TOUCHED,
        "touched_rows['journey_handoffs']": "_touched_rows() results from land(): " + _TOUCHED,
    },
    "storage/store.py:_land_losing_copies": {"changed": "literal SQL text assigned in the same function"},
    "storage/store.py:_rows_of_landed_ids": {"ids": "event ids, each quoted with sql_literal in the same function"},
    "storage/store.py:_check_accounting": {"staged": "literal SQL text assigned in the same function",
                                           "self._touched_events()": "literal SQL text, or literal text around " + _TOUCHED},
    "storage/store.py:_touched_events": {"self._touched_rows('events', again=True)": _TOUCHED},
    "storage/store.py:_read_links": {"self._touched_rows('journey_events', again=True)": _TOUCHED},
    "storage/store.py:_freeze_settled_journeys": {"self._touched_rows('journeys', again=True)": _TOUCHED},
    "storage/store.py:_read_history_around_settled": {
        "settled": "the module constant _SETTLED_EVENT (fixed SQL text) formatted with _touched_rows, same function",
        "landed_events": "_landed_history(): literal text around " + _TOUCHED,
        "unfrozen": "literal SQL text assigned in the same function",
    },
    "storage/store.py:_landed_history": {"self._touched_rows('events', again=True)": _TOUCHED},
    "storage/store.py:_touched_rows": {
        "table": "checked against the module set CUSTOMER_TABLES (fixed table names) at the top of the function",
    },
    "storage/store.py:_touched_by_journey_batch": {
        "self._touched_rows('journeys', again=True)": _TOUCHED,
        "MAX_JOURNEY_BATCHES + 1": "the int module constant MAX_JOURNEY_BATCHES",
    },
    "storage/store.py:_touched_stretches": {
        "table": "argument from _touched_rows(), checked there against the module set CUSTOMER_TABLES",
        "customers": "literal SQL text assigned in _touched_rows()",
    },
    "storage/event_blocks_test.py:insert_events": {"prefix": "literal text from the test functions",
                                                   "customer_sql": "literal SQL text from the test functions",
                                                   "rows": "int expressions from the test functions"},
    "storage/event_blocks_test.py:picked": {"condition": "literal SQL text, or " + _TOUCHED},
    "storage/event_blocks_test.py:test_a_landing_keeps_the_map_exact_for_new_rows_and_rows_moved_to_another_customer": {
        "true_pairs": "literal SQL text assigned in the same function"},
    "storage/store_test.py:both": {"plain": "literal SQL text assigned in the same function", "two_steps": _TOUCHED},
    "storage/store_test.py:rows": {"condition": "literal SQL text, or " + _TOUCHED},
    "storage/store_test.py:test_a_journeys_rows_are_found_by_the_batch_id_of_its_journey_as_by_its_customer": {
        "condition": _TOUCHED, "MAX_JOURNEY_BATCHES + 1": "the int module constant MAX_JOURNEY_BATCHES",
        "plain": "literal SQL text assigned in the same function"},
    "storage/store_test.py:test_touched_rows_finds_exactly_the_touched_customers_rows_inside_an_open_transaction": {
        "store._touched_rows('journey_events')": _TOUCHED},
    "storage/store_test.py:test_a_table_whose_touched_rows_lie_everywhere_is_read_in_one_step_for_a_while": {
        "condition": _TOUCHED},
    "storage/replica.py:_create_views": {"self.source": "ident() of current_database(), set in __init__"},
    "storage/replica.py:_rebuild": {
        "table": "loop over the module tuple TABLES",
        "self.source": "ident() of current_database(), set in __init__",
    },
    "storage/replica.py:_needs_rebuild": {"self.source": "ident() of current_database(), set in __init__"},
    "storage/replica.py:_last_landed": {"self.source": "ident() of current_database(), set in __init__"},
    "storage/replica.py:_fingerprint": {
        "self.source": "ident() of current_database(), set in __init__",
        "t": "loop over the module tuple TABLES",
    },
    "storage/reader_safety.py:check_sql": {"kind.name": "an error message, not SQL: the parser's statement type name"},
    "storage/reader_safety.py:harden": {
        "_list(dirs)": "_list() quotes every path as a literal (doubling ')",
        "_list(paths)": "_list() quotes every path as a literal (doubling ')",
    },
    "storage/replica.py:read_summary": {
        "prefix": '"" or "<self.source>." / "<LAKE_ALIAS>." from its call sites (ident()/constant)',
        "t": "loop over the module tuple TABLES",
        "where": "SharedLake._mine: WRITER_COLUMN = sql_literal(writer id), the only caller passing it",
        "condition": "' WHERE ' + where (above) or empty, same function",
    },
    **{f"storage/shared_lake.py:{function}": {e: LAKE_REASONS[e] for e in expressions.split()} for function, expressions in {
        "writer_identity": "source", "_open": "options_sql", "_columns": "database table",
        "_ensure_tables": "table self.source", "_state": "self._mine", "_views_current": "self._mine",
        "_replace_views": "self._mine", "_touched": "self.source window",
        "_publish_once": "mine touched self.source window replaced table writer",
        "_rebuild_once": "table mine writer self.source", "_record_conflicts": "mine self.source window found",
        "_expire": "lake",
    }.items()},
    "storage/shared_lake.py:_add_new_columns": {
        "table": "a key of the module mapping ADDED_COLUMNS: a fixed table name",
        "kind": "a value of the module mapping ADDED_COLUMNS: a fixed SQL type name",
    },
    "storage/replica.py:_expire": {
        "lake": "sql_literal(LAKE_ALIAS) in the same function",
        "ids": "list of int() snapshot ids read back from the catalog",
    },
    "storage/store.py:export_history": {
        "query": "f-string in the same function built from the module constant _HISTORY_COLUMNS",
        "partitioned": "literal PARTITION_BY clause with int(partitions)",
        "self._landed_history()": "literal text around " + _TOUCHED,
    },
    "storage/store.py:land": {
        "touched": "literal subquery in the same function",
        "event_columns": "column list of literals and _ts()/_ms_ts() of literal column names, same function",
        "assignments": "SET list joined from literal (column, expression) pairs in the same function",
        "touched_rows['journeys']": "_touched_rows() results in the same function: " + _TOUCHED,
        "touched_rows['journey_events']": "_touched_rows() results in the same function: " + _TOUCHED,
    },
    "storage/store.py:count": {"table": "checked against a fixed set of table names just before"},
    "storage/store.py:record_source_changes": {"where": "literal WHERE of ? placeholders in the same loop"},
    "ops/summary.py:_histogram": {
        "column": "literal column names at the two call sites in summarize()",
        "cap": "int literals at the two call sites in summarize()",
    },
    "ops/summary.py:summarize": {"db_path": "printed as a hint for the user to copy, never executed"},
    "storage/models.py:catalog_statements": {"m.select": "model SQL read from the repository's sql/models files"},
    "storage/replica.py:_load_installed_only": {"name": "literal extension names from load_extensions()"},
    "ops/report.py:collect": {
        "where": "Filters.where(): clauses of ? placeholders, values bound as parameters",
        "journeys": "subquery built in collect() from where",
        "label": "_bucket_sql(): CASE text from the module's constant buckets",
        "order": "_bucket_sql(): CASE text from the module's constant buckets",
        "landed_where": "Filters: clauses of ? placeholders, values bound as parameters",
        "landed_where.replace('landed_at', 'b.finished_at')": "the same clauses with a column renamed",
    },
    "cli/sql_shell.py:_tables": {"self._relations()": "literal catalog query"},
    "cli/sql_shell.py:_schema": {"self._relations()": "literal catalog query"},
    "cli/sql_shell.py:_describe": {"name": "quoted in _describe() by doubling '"},
}
SQL = re.compile(r"\b(SELECT|INSERT|DELETE|COPY|FROM|ATTACH|DETACH|CREATE|DROP|ALTER|UPDATE|USE|LOAD|INSTALL|CALL|"
                 r"DESCRIBE|INTERVAL|WHERE|PRAGMA|SET)\b")


def _module_constants() -> set[str]:
    """UPPER_CASE names bound at module level to a literal (or arithmetic on literals), in any
    pipelines/ module."""
    constants = set()
    for path in (ROOT / "pipelines").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id.isupper()
                    and all(isinstance(n, (ast.Constant, ast.BinOp, ast.operator)) for n in ast.walk(node.value))):
                constants.add(node.targets[0].id)
    return constants


def _safe_by_construction(expr: ast.expr, constants: set[str]) -> bool:
    if isinstance(expr, ast.Constant):
        return True
    if isinstance(expr, ast.Name):
        return expr.id in constants
    if isinstance(expr, ast.IfExp):
        return _safe_by_construction(expr.body, constants) and _safe_by_construction(expr.orelse, constants)
    if isinstance(expr, ast.Call):
        if ast.unparse(expr.func) in QUOTING:
            return True
        if ast.unparse(expr.func) in {"_ts", "_ms_ts"}:
            return all(isinstance(a, ast.Constant) for a in expr.args)
    return False


def sql_interpolations() -> list[tuple[str, str, int]]:
    """(file:function, expression, line) for every {...} in an f-string that holds SQL keywords;
    the function is the innermost one around the f-string."""
    found = []
    for path in sorted((ROOT / "pipelines").rglob("*.py")):
        tree = ast.parse(path.read_text())
        enclosing: dict[ast.AST, str] = {}

        def visit(node: ast.AST, function: str) -> None:
            for child in ast.iter_child_nodes(node):
                inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
                enclosing[child] = inner  # noqa: B023 (the dict of this file, filled and read in this iteration)
                visit(child, inner)

        visit(tree, "<module>")
        for node, function in enclosing.items():
            if not isinstance(node, ast.JoinedStr):
                continue
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            if SQL.search(text):
                found += [(f"{path.relative_to(ROOT / 'pipelines').as_posix()}:{function}", ast.unparse(v.value), node.lineno)
                          for v in node.values if isinstance(v, ast.FormattedValue)]
    return found


def test_sql_text_is_built_only_from_quoted_or_reviewed_values():
    """Every value interpolated into SQL text in pipelines/ is quoted, a constant, or reviewed in
    its place. There is no permanent exemption: the retention setting is a bound parameter now."""
    constants = _module_constants()
    unreviewed, used = [], set()
    for where, expr, line in sql_interpolations():
        if _safe_by_construction(ast.parse(expr, mode="eval").body, constants):
            continue
        if expr in REVIEWED.get(where, {}):
            used.add((where, expr))
            continue
        unreviewed.append(f"{where} line {line}: {{{expr}}}")
    assert unreviewed == [], "SQL text interpolates unreviewed values"
    stale = [f"{w}: {e}" for w, entries in REVIEWED.items() for e in entries if (w, e) not in used]
    assert stale == [], "reviewed interpolations that no longer exist: remove them"


def test_the_checker_catches_unquoted_interpolation(tmp_path, monkeypatch):
    """The checker itself fails on the kind of line it exists for (the old INTERVAL '{RETENTION}')."""
    bad = ("RETENTION = os.environ.get('X', '10 minutes')\ndef _expire(con):\n"
           "    con.execute(f\"SELECT 1 WHERE t < now() - INTERVAL '{RETENTION}'\")\n")
    fake = tmp_path / "pipelines"
    fake.mkdir()
    (fake / "replica.py").write_text(bad)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert [(w, e) for w, e, _ in sql_interpolations()] == [("replica.py:_expire", "RETENTION")]
    assert not _safe_by_construction(ast.parse("RETENTION", mode="eval").body, _module_constants())


def test_replica_retention_is_parsed_and_bound_not_pasted(monkeypatch):
    from pipelines.storage.replica import DEFAULT_RETENTION_S, retention_seconds

    assert retention_seconds("") == DEFAULT_RETENTION_S == 600
    cases = {"10 minutes": 600, "1 minute": 60, "2 hours": 7200, "1 day": 86400, "30 seconds": 30, "90s": 90,
             "10m": 600, "3h": 10800, "2d": 172800, "45": 45, " 1.5 HOURS ": 5400}
    assert {text: retention_seconds(text) for text in cases} == cases
    for hostile in ["10 minutes'; DROP TABLE events; --", "1 second' OR '1'='1", "ten minutes", "-5 minutes", "5 weeks", "1e9"]:
        with pytest.raises(ValueError, match="CXJ_REPLICA_RETENTION"):
            retention_seconds(hostile)
    monkeypatch.setenv("CXJ_REPLICA_RETENTION", "7 minutes")
    assert retention_seconds() == 420


def test_replica_snapshot_expiry_runs_with_the_bound_retention(broker, topics, tmp_path, monkeypatch, caplog):
    """The expiry query for real: a 0 s retention expires every snapshot but the newest, a day
    keeps them all, and a hostile value is refused with one warning and changes nothing."""
    import logging

    from pipelines.storage.store import Store
    from tests.support import run_once

    db = tmp_path / "r.duckdb"
    for i in range(3):  # three batches: three publishes, each a snapshot
        send_events(broker, topics, [{"event_id": f"r{i}", "event_type": "ticket.created", "customer_id": f"c{i}",
                                      "schema_version": 1, "occurred_at": "2026-10-01T10:00:00Z", "ticket_id": f"T{i}",
                                      "channel": "web"}])
        run_once(db, broker, topics)
    caplog.set_level(logging.WARNING, logger="cxj")
    with Store(db) as store:
        snapshots = lambda: store.replica.con.execute("SELECT count(*) FROM ducklake_snapshots('lake')").fetchone()[0]  # noqa: E731
        before = snapshots()
        assert before >= 4
        monkeypatch.setenv("CXJ_REPLICA_RETENTION", "10 minutes'; DROP TABLE events; --")
        assert store.replica._expire() == 0
        assert [r.getMessage() for r in caplog.records if "CXJ_REPLICA_RETENTION" in r.getMessage()] == [
            "CXJ_REPLICA_RETENTION=\"10 minutes'; DROP TABLE events; --\" is not a duration like '10 minutes' or 10m; using 600 s"]
        monkeypatch.setenv("CXJ_REPLICA_RETENTION", "1 day")
        assert store.replica._expire() == 0
        monkeypatch.setenv("CXJ_REPLICA_RETENTION", "0s")
        assert store.replica._expire() == before - 1
        assert snapshots() == 1
    assert table(db, "SELECT count(*) FROM events") == [(3,)]


def test_a_hostile_database_path_is_quoted_everywhere(broker, topics, tmp_path):
    """The --db path ends up in SQL as a database name, a file path and the replica's paths."""
    folder = tmp_path / "it's \"odd\"; DROP TABLE events; --"
    folder.mkdir()
    db = folder / "j'o\"u.duckdb"
    send_events(broker, topics, [{"event_id": f"q{i}", "event_type": "ticket.created", "customer_id": "c", "schema_version": 1,
                                  "occurred_at": "2026-10-01T10:00:00+02:00", "ticket_id": f"T{i}", "channel": "web"}
                                 for i in range(5)])
    run = [sys.executable, "-m", "pipelines.cli", "run", "--once", "--db", str(db), "--bootstrap-servers", broker.bootstrap_servers,
           "--topic-tickets", topics["tickets"], "--topic-chats", topics["chats"], "--topic-surveys", topics["surveys"]]
    result = subprocess.run(run, capture_output=True, text=True, timeout=120)  # with the DuckLake read replica
    assert result.returncode == 0, result.stderr[-2000:]
    assert "replica disabled" not in result.stderr
    query = subprocess.run([sys.executable, "-m", "pipelines.cli", "sql", "SELECT count(*) AS n FROM events", "--db", str(db),
                            "--format", "csv"], capture_output=True, text=True, timeout=120)
    assert query.returncode == 0 and query.stdout.split() == ["n", "5"], query.stdout + query.stderr
