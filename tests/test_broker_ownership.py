"""`cxj broker start/stop/status` only touch the broker their own state directory started."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import free_port

CXJ = [sys.executable, "-m", "pipelines.cli", "broker"]


def broker_cmd(action: str, port: int, state: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXJ_")}
    return subprocess.run([*CXJ, action, "--port", str(port), "--state-dir", str(state), "--topics", "own.t"],
                          capture_output=True, text=True, timeout=120, env=env)


def test_other_checkout_cannot_stop_or_adopt_my_broker(tmp_path):
    port = free_port()
    mine, theirs = tmp_path / "checkout-a" / ".cxj", tmp_path / "checkout-b" / ".cxj"
    started = broker_cmd("start", port, mine)
    assert started.returncode == 0, started.stderr
    pid = int((mine / f"broker-{port}.pid").read_text())
    try:
        stop = broker_cmd("stop", port, theirs)
        assert stop.returncode == 3
        assert f"was started from another state directory ({mine.absolute()}); not stopping it" in stop.stderr
        assert Path(f"/proc/{pid}").exists()
        start = broker_cmd("start", port, theirs)
        assert start.returncode == 3 and f"held by a broker started from another state directory ({mine.absolute()}" in start.stderr
        assert not (theirs / f"broker-{port}.pid").exists()
        status = broker_cmd("status", port, theirs)
        assert status.returncode == 0 and f"another state directory ({mine.absolute()}, pid {pid})" in status.stdout
        # the owner finds its broker even when its pid file is lost
        (mine / f"broker-{port}.pid").unlink()
        own_status = broker_cmd("status", port, mine)
        assert f"running (pid {pid})" in own_status.stdout
    finally:
        stopped = broker_cmd("stop", port, mine)
    assert stopped.returncode == 0 and f"broker on port {port} stopped" in stopped.stdout
    assert not Path(f"/proc/{pid}").exists() or b"tansu" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert broker_cmd("stop", port, theirs).stdout.startswith("no broker of ours")


def test_demo_hint_names_the_port_and_make_passes_it(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXJ_")}
    demo = subprocess.run([sys.executable, "-m", "pipelines.cli", "demo", "--customers", "20", "--port", str(port),
                           "--db", str(tmp_path / "demo.duckdb")], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)
    try:
        assert demo.returncode == 0, demo.stderr[-2000:]
        assert f"stop it with: .venv/bin/cxj broker stop --port {port}" in demo.stdout
    finally:
        stopped = broker_cmd("stop", port, tmp_path / ".cxj")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    # a clean make environment: under `make test` MAKEFLAGS/MAKELEVEL would add "Entering directory" lines
    make_env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    make = subprocess.run(["make", "--no-print-directory", "-n", "demo", "PORT=19093"], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent, env=make_env)
    assert "cxj demo --port 19093" in make.stdout, make.stdout
    plain = subprocess.run(["make", "--no-print-directory", "-n", "demo"], capture_output=True, text=True,
                           timeout=60, cwd=Path(__file__).resolve().parent.parent, env=make_env)
    assert plain.stdout.rstrip().endswith("cxj demo"), plain.stdout
