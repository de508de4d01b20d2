"""Mutation check of the pure journey and parsing logic: do the fast tests notice a wrong rule?

Enumerates mutation points in the TARGETS on the syntax tree (comparison operators, and/or,
`not`, if-conditions, + and -, min/max, integer and boolean constants: ordering ranks, window
checks, handoff conditions, limits), applies ONE at a time and runs the fast pure test
selection (TESTS, below: the one place that says which tests count) with `-x`. A mutant is
*killed* when some test fails (or it hangs past the timeout), *survived* when all pass.
Prints a table per file and every survivor with its line, so each survivor gets a test that
encodes the documented rule (docs/metrics.md), or the code is simplified so that the
mutation point disappears. A mutant that is equivalent by construction (no input can tell it
from the original) is listed in EXCLUDED with its reason: it is not run (``--run-excluded``
runs it anyway and fails if the tests kill it) and is printed separately, never counted as
killed.

Each mutant runs in a forked child of a process that has already imported the heavy
third-party libraries, with the mutated module put into sys.modules before pytest imports
the tests: nothing is written to the source tree.

    .venv/bin/python tests/mutation/run_mutants.py                 # all targets (tens of minutes)
    .venv/bin/python tests/mutation/run_mutants.py --target transforms/parse.py --limit 20
    make mutate
"""
from __future__ import annotations

import argparse
import ast
import os
import resource
import signal
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["transforms/journeys.py", "transforms/events.py", "transforms/parse.py"]
# The fast selection that must kill mutants. Pure tests only (no broker, no Beam run); fast ones
# first, so most mutants die within seconds. Re-check the survivor count whenever this changes.
TESTS = [
    "transforms/journeys_test.py",
    "transforms/parse_test.py",
    "tests/test_golden.py::test_journey_id_formula_is_pinned",
    "tests/test_golden.py::test_golden_pure",
    "tests/test_golden.py::test_golden_arrival_order_is_irrelevant",
    "tests/test_fuzz.py::test_poison_values_are_contained",
    "tests/test_fuzz.py::test_each_message_alone_gets_its_written_down_outcome",
    "tests/test_properties.py::test_oracle_matches_the_golden_scenarios",
    "tests/test_properties.py::test_pure_invariants",
    "tests/test_properties.py::test_pure_results_ignore_arrival_order_duplicates_and_batching",
]
PRELOAD = ["pytest", "hypothesis", "duckdb", "pyarrow", "pyarrow.parquet", "fastjsonschema", "apache_beam", "kafka",
           "polars", "schemas"]

SWAP_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add}


@dataclass
class Mutant:
    index: int  # position in the enumeration order of its file
    line: int
    description: str
    excluded_because: Optional[str] = None  # set for a mutant listed in EXCLUDED: not run


@dataclass(frozen=True)
class Exclusion:
    """One mutant that is equivalent by construction: no input can tell it from the original.

    Matched by file, the exact (stripped) source line and the mutation's description, and it
    must match exactly ``count`` mutants: when the code changes, a stale exclusion stops the
    run instead of silently hiding a new mutant. Every entry is justified in docs/reliability.md
    ("Mutation check (issue 16)"); keep this list short and prefer changing the code or adding a
    test that encodes a rule.
    """

    target: str
    line_text: str
    description: str
    reason: str
    count: int = 1


EXCLUDED: list[Exclusion] = [
    Exclusion(
        "transforms/parse.py",
        'if text.count("{") + text.count("[") > limits.max_depth and _too_deep(doc, limits.max_depth):',
        "Gt -> GtE",
        "the bracket count is a cheap upper bound of the nesting depth that only skips the walk: at "
        "count == max_depth the depth is at most max_depth, so the walk answers 'not too deep' "
        "either way; > and >= skip different walks, never give a different outcome",
    ),
]


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _skipped(tree: ast.AST) -> set[int]:
    """Nodes never mutated: docstrings, annotations, and anything inside raise/log calls."""
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        roots: list[ast.AST] = []
        if isinstance(node, (ast.AnnAssign, ast.arg)) and node.annotation is not None:
            roots.append(node.annotation)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            roots.append(node.returns)
        if isinstance(node, ast.Raise):
            roots.append(node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in {
                "debug", "info", "warning", "error", "exception"}:
            roots.append(node)
        for root in roots:
            skip |= {id(n) for n in ast.walk(root)}
    return skip


def points(tree: ast.AST) -> Iterator[tuple[ast.AST, str, Callable[[ast.AST], None]]]:
    """Every mutation point in a deterministic order: (node, description, apply)."""
    skip = _skipped(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in SWAP_COMPARE:
                    new = SWAP_COMPARE[type(op)]

                    def apply(n, i=i, new=new):
                        n.ops[i] = new()
                    yield node, f"{type(op).__name__} -> {new.__name__}", apply
        elif isinstance(node, ast.BoolOp):
            new = ast.Or if isinstance(node.op, ast.And) else ast.And

            def apply(n, new=new):
                n.op = new()
            yield node, f"{type(node.op).__name__} -> {new.__name__}", apply
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            def apply(n):
                n.operand = ast.UnaryOp(op=ast.Not(), operand=n.operand)  # not not x: the truth of x
            yield node, "not x -> x", apply
        elif isinstance(node, ast.BinOp) and type(node.op) in SWAP_BINOP:
            new = SWAP_BINOP[type(node.op)]

            def apply(n, new=new):
                n.op = new()
            yield node, f"{type(node.op).__name__} -> {new.__name__}", apply
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"min", "max"}:
            other = "max" if node.func.id == "min" else "min"

            def apply(n, other=other):
                n.func.id = other
            yield node, f"{node.func.id}() -> {other}()", apply
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            def apply(n):
                n.value = not n.value
            yield node, f"{node.value} -> {not node.value}", apply
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            def apply(n):
                n.value = n.value + 1
            yield node, f"{node.value} -> {node.value + 1}", apply
        if isinstance(node, (ast.If, ast.IfExp, ast.While)) and id(node.test) not in skip:
            def apply(n):
                n.test = ast.UnaryOp(op=ast.Not(), operand=n.test)
            yield node, f"{type(node).__name__} condition negated", apply


def enumerate_mutants(source: str, target: Optional[str] = None) -> list[Mutant]:
    """The file's mutants in enumeration order, those listed in EXCLUDED marked with the reason.

    Raises ValueError when an exclusion of ``target`` does not match exactly its ``count``."""
    tree = ast.parse(source)
    mutants = [Mutant(i, getattr(node, "lineno", 0), text) for i, (node, text, _) in enumerate(points(tree))]
    lines = source.splitlines()
    for exclusion in (e for e in EXCLUDED if e.target == target):
        matched = [m for m in mutants
                   if m.description == exclusion.description and lines[m.line - 1].strip() == exclusion.line_text]
        if len(matched) != exclusion.count:
            raise ValueError(f"stale exclusion in {target}: {exclusion.description} on {exclusion.line_text!r} "
                             f"matches {len(matched)} mutants, expected {exclusion.count}")
        for m in matched:
            m.excluded_because = exclusion.reason
    return mutants


def mutated_source(source: str, index: int) -> str:
    tree = ast.parse(source)
    for i, (node, _, apply) in enumerate(points(tree)):
        if i == index:
            apply(node)
            return ast.unparse(ast.fix_missing_locations(tree))
    raise IndexError(index)


def _run_tests_in_child(module_name: Optional[str], path: Optional[Path], source: Optional[str], log: Path) -> int:
    """In a forked child: install the mutated module, run the selection, exit with pytest's code."""
    fd = os.open(str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(ROOT)
    if module_name is not None:
        import transforms

        module = types.ModuleType(module_name)
        module.__file__ = str(path)
        module.__package__ = "transforms"
        sys.modules[module_name] = module
        setattr(transforms, module_name.rsplit(".", 1)[1], module)
        exec(compile(source, str(path), "exec"), module.__dict__)
    # Hypothesis' health checks and deadlines measure wall time: on a busy machine they fail a
    # test that is merely descheduled, which would count a mutant as killed by the load. The CI
    # profile (tests/conftest.py) without them; a real hang is caught by the CPU limit instead.
    from hypothesis import HealthCheck, settings

    settings.register_profile("mutation", derandomize=True, database=None, print_blob=True, deadline=None,
                              suppress_health_check=list(HealthCheck))
    os.environ["CXJ_HYPOTHESIS_PROFILE"] = "mutation"
    import pytest

    return int(pytest.main([*TESTS, "-x", "-q", "-p", "no:cacheprovider", "--hypothesis-seed=0", "-o", "addopts="]))


def _killed_by(log: Path) -> str:
    """The first failing test and its error, from pytest's short summary in the child's log."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "?"
    failed = [line.split(" ", 1)[1] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    if failed:
        return failed[0][:160]
    errors = [line for line in lines if line.startswith(("E ", "Traceback")) or "Error" in line[:40]]
    return (errors[-1] if errors else "no summary").strip()[:160]


def run_one(module_name: Optional[str], path: Optional[Path], source: Optional[str], timeout_s: float, log: Path,
            cpu_limit_s: Optional[int] = None) -> tuple[str, float]:
    """('killed' | 'survived' | 'timeout', CPU seconds the child used). A hang counts as killed
    (the tests did not pass): the child may use ``cpu_limit_s`` of CPU time (the kernel stops it
    with SIGXCPU), which does not depend on how busy the machine is; ``timeout_s`` of wall time
    is only a backstop."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if cpu_limit_s:
                resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit_s, cpu_limit_s + 10))
            code = _run_tests_in_child(module_name, path, source, log)
        except BaseException:  # a mutant that does not even import is killed
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code if isinstance(code, int) else 1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            cpu_s = usage.ru_utime + usage.ru_stime
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
                return "timeout", cpu_s
            return ("survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"), cpu_s
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    _, _, usage = os.wait4(pid, 0)
    return "timeout", usage.ru_utime + usage.ru_stime


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", help="file to mutate (default: all TARGETS)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many mutants per file (smoke run)")
    parser.add_argument("--only", type=int, action="append", help="mutant index to run (with one --target)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--log-dir", type=Path, default=ROOT / ".mutants", help="per-mutant test output")
    parser.add_argument("--cpu-limit", type=int, default=0,
                        help="CPU seconds per mutant before it counts as a hang (default: 4 x the baseline's, at least 60)")
    parser.add_argument("--timeout", type=float, default=0,
                        help="wall seconds per mutant, a backstop (default: 10 x the baseline's, at least 900)")
    parser.add_argument("--run-excluded", action="store_true",
                        help="run the excluded mutants too: any that is killed is a stale exclusion (exit 1)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    targets = args.target or TARGETS
    try:
        enumerated = {target: enumerate_mutants((ROOT / target).read_text(), target) for target in targets}
    except ValueError as exc:
        print(exc)
        return 2

    if args.list:
        for target in targets:
            for m in enumerated[target]:
                why = f"  EXCLUDED: {m.excluded_because}" if m.excluded_because else ""
                print(f"{target}:{m.line}  #{m.index}  {m.description}{why}")
        return 0
    for name in PRELOAD:  # shared by every forked child: each mutant then costs only its tests
        try:
            __import__(name)
        except ImportError:
            pass
    args.log_dir.mkdir(exist_ok=True)
    started = time.monotonic()
    baseline, baseline_cpu_s = run_one(None, None, None, 3600, args.log_dir / "baseline.log")
    baseline_s = time.monotonic() - started
    if baseline != "survived":
        print(f"the test selection fails without any mutation ({baseline}); see {args.log_dir / 'baseline.log'}")
        return 2
    # A hang is told by CPU time, which a busy machine does not stretch: a survivor slowed down
    # by other work must not pass for a hang (a kill). Wall time is only a backstop.
    cpu_limit_s = args.cpu_limit or max(60, int(4 * baseline_cpu_s) + 1)
    timeout_s = args.timeout or max(900.0, 10 * baseline_s)
    print(f"baseline: the selection passes in {baseline_s:.1f}s ({baseline_cpu_s:.1f}s CPU); per mutant at most "
          f"{cpu_limit_s}s CPU, {timeout_s:.0f}s wall", flush=True)

    totals: dict[str, dict[str, int]] = {}
    survivors: list[str] = []
    excluded: list[str] = []
    stale: list[str] = []  # excluded, yet killed: the exclusion is wrong
    for target in targets:
        path = ROOT / target
        source = path.read_text()
        module_name = target.removesuffix(".py").replace("/", ".")
        mutants = enumerated[target]
        if args.only:
            mutants = [m for m in mutants if m.index in args.only]
        if args.limit:
            mutants = mutants[: args.limit]
        counts = totals.setdefault(target, {"killed": 0, "timeout": 0, "survived": 0, "excluded": 0})
        for m in mutants:
            line = f"{target}:{m.line}  #{m.index}  {m.description}"
            if m.excluded_because:
                counts["excluded"] += 1
                excluded.append(f"{line}\n      {m.excluded_because}")
                if not args.run_excluded:
                    print(f"  {'excluded':8s} {line}", flush=True)
                    continue
            log = args.log_dir / f"{path.stem}-{m.index}.log"
            result, _ = run_one(module_name, path, mutated_source(source, m.index), timeout_s, log, cpu_limit_s)
            if m.excluded_because:
                print(f"  excluded {line} ({result} when run)", flush=True)
                if result != "survived":
                    stale.append(line)
                    log.unlink(missing_ok=True)
                continue
            counts[result] += 1
            why = f"  <- {_killed_by(log)}" if result == "killed" else ""
            print(f"  {result:8s} {line}{why}", flush=True)
            if result == "survived":
                survivors.append(line)
            else:
                log.unlink(missing_ok=True)

    print("\nfile                         killed  timeout  survived  excluded  total")
    for target, c in totals.items():
        print(f"{target:28s} {c['killed']:6d} {c['timeout']:8d} {c['survived']:9d} {c['excluded']:9d} {sum(c.values()):6d}")
    killed = sum(c["killed"] + c["timeout"] for c in totals.values())
    run = sum(c["killed"] + c["timeout"] + c["survived"] for c in totals.values())
    print(f"{'all':28s} killed {killed}/{run} run, {len(excluded)} excluded, in {time.monotonic() - started:.0f}s")
    print("\nsurvivors:" if survivors else "\nno survivors")
    for line in survivors:
        print("  " + line)
    if excluded:
        print("\nexcluded as equivalent by construction (EXCLUDED in this script, docs/reliability.md):")
        for line in excluded:
            print("  " + line)
    for line in stale:
        print(f"  STALE EXCLUSION (the tests kill it): {line}")
    return 1 if survivors or stale else 0


if __name__ == "__main__":
    sys.exit(main())
