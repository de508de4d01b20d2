"""A throwaway PostgreSQL cluster for tests: initdb into a temporary folder, start on a free
port with its unix socket in that folder, trust authentication, stop and delete at the end.

Why not a running server: tests must start what they need themselves (CI starts nothing), and
each test session gets a catalog nobody else touches. Why a unix socket *and* a port: DuckDB's
postgres extension (libpq) connects through either; the socket needs no network at all.

PostgreSQL refuses to run as root (initdb and postgres both exit). These machines run tests as
root, so then the cluster runs as the unprivileged `postgres` user (created by Debian's
postgresql package; else `nobody`) through `runuser`/`setpriv`, in a folder that user owns
outside root's private pytest temp folder. Binaries: the newest /usr/lib/postgresql/*/bin,
else `pg_config --bindir`, else PATH (`make test` installs them: infra/install-postgres.sh).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from tests.support import free_port


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here (or the cluster would not start)."""


def find_bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                        if Path(p).parent.name.isdigit() else 0)
    for directory in reversed(candidates):
        if (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and (Path(out) / "pg_ctl").exists():
            return Path(out)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found: run infra/install-postgres.sh")


def _run_as() -> Optional[pwd.struct_passwd]:
    """The user to run the cluster as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as")


class ThrowawayPostgres:
    """One cluster: ``start()``, use ``libpq`` (a DuckDB/libpq connection string), ``stop()``."""

    def __init__(self, database: str = "cxj") -> None:
        self.bindir = find_bindir()
        self.user = _run_as()
        self.database = database
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cxj-pg-"))
        self.datadir = self.root / "data"
        self.socket_dir = self.root
        self.log = self.root / "postgres.log"
        self.started = False
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        os.chmod(self.root, 0o755)

    def _cmd(self, args: Sequence[str]) -> list[str]:
        if self.user is None:
            return list(args)
        if shutil.which("setpriv"):
            return ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups", *args]
        return ["runuser", "-u", self.user.pw_name, "--", *args]

    def _run(self, args: Sequence[str], timeout: float = 120) -> None:
        done = subprocess.run(self._cmd(args), capture_output=True, text=True, timeout=timeout, cwd=self.root,
                              env={**os.environ, "LC_ALL": "C", "LANG": "C"})
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise PostgresUnavailable(f"{Path(args[0]).name} failed: {detail[-1] if detail else done.returncode}\n{log}")

    def start(self) -> "ThrowawayPostgres":
        self._run([str(self.bindir / "initdb"), "-D", str(self.datadir), "-A", "trust", "-U", "cxj",
                   "--no-sync", "-E", "UTF8", "--locale=C"])
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c max_connections=100 -c shared_buffers=32MB")
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.log),
                   "-o", options, "-w", "-t", "60", "start"])
        self.started = True
        self._run([str(self.bindir / "createdb"), "-h", str(self.socket_dir), "-p", str(self.port), "-U", "cxj",
                   self.database])
        return self

    @property
    def libpq(self) -> str:
        """Connection string through the unix socket (what DuckDB's postgres extension takes)."""
        return f"dbname={self.database} host={self.socket_dir} port={self.port} user=cxj"

    @property
    def url(self) -> str:
        """The same as a postgresql:// URL over TCP on 127.0.0.1."""
        return f"postgresql://cxj@127.0.0.1:{self.port}/{self.database}"

    def new_database(self, name: str) -> str:
        """Creates database ``name``; returns its postgresql:// URL (a lake per test)."""
        self._run([str(self.bindir / "createdb"), "-h", str(self.socket_dir), "-p", str(self.port), "-U", "cxj", name])
        return f"postgresql://cxj@127.0.0.1:{self.port}/{name}"

    def psql(self, sql: str) -> str:
        done = subprocess.run([str(self.bindir / "psql"), "-h", str(self.socket_dir), "-p", str(self.port), "-U", "cxj",
                               "-d", self.database, "-At", "-c", sql], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip())
        return done.stdout

    def stop(self) -> None:
        if self.started:
            try:
                self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop"], timeout=60)
            except (PostgresUnavailable, subprocess.TimeoutExpired):
                pass
            self.started = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            shutil.rmtree(self.root, ignore_errors=True)
            if not self.root.exists():
                break
            time.sleep(0.2)
