"""The quick exit keeps what the interpreter's own exit would have done that matters: the exit
code, every line written, the exit handlers (temporary directories removed), and threads still
working are waited for."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(body: str) -> subprocess.CompletedProcess:
    script = "import sys\nfrom pipelines.ops.quick_exit import exit_quickly\n" + body
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": ""})


def test_the_exit_code_and_every_line_written_come_out():
    lines = "".join(f"print('line {i}')\n" for i in range(2000))  # block-buffered: a pipe, not a terminal
    done = _run(lines + "print('last', file=sys.stderr, end='')\nexit_quickly(7)\n")
    assert done.returncode == 7
    assert done.stdout.splitlines() == [f"line {i}" for i in range(2000)]
    assert done.stderr == "last"


def test_exit_handlers_run_temporary_directories_are_removed_and_logs_flushed(tmp_path):
    marker = tmp_path / "handler-ran"
    done = _run(
        "import atexit, logging, tempfile\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').close())\n"
        "kept = tempfile.TemporaryDirectory()\n"  # removed by its finalizer at exit, never explicitly
        "print(kept.name)\n"
        f"handler = logging.FileHandler({str(tmp_path / 'log')!r}, delay=True)\n"
        "logging.getLogger().addHandler(handler)\n"
        "logging.getLogger().warning('logged before the exit')\n"
        "exit_quickly(0)\n"
    )
    assert done.returncode == 0, done.stderr
    assert marker.exists()
    assert not Path(done.stdout.strip()).exists()
    assert "logged before the exit" in (tmp_path / "log").read_text()


def test_a_thread_still_working_is_waited_for():
    done = _run(
        "import threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.5), print('the thread finished', flush=True))).start()\n"
        "exit_quickly(3)\n"
    )
    assert done.returncode == 3
    assert done.stdout == "the thread finished\n"
