#!/usr/bin/env bash
# Installs Debian's PostgreSQL server binaries for the shared-lake tests (tests/test_shared_lake.py),
# which start a throwaway cluster of their own (initdb in a temporary folder, a free port, a unix
# socket, trust auth) and stop it at the end. No service is enabled or started here.
# Idempotent: does nothing when initdb and pg_ctl are found. Best effort: without them the
# shared-lake tests fail with one line naming this script.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install-postgres: PostgreSQL server binaries are missing; run as root or: apt-get install -y postgresql" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || true
# the package creates the `postgres` system user, which the tests run the cluster as when run by root
apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
    || { echo "install-postgres: apt-get install postgresql failed; the shared-lake tests will fail" >&2; exit 0; }
ls /usr/lib/postgresql/*/bin/pg_ctl
