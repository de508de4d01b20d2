#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for the report's browser test
# (tests/test_report_browser.py). The test drives it over the DevTools protocol with
# playwright's Python client; playwright's own browser download is never used.
# Idempotent: does nothing when /usr/bin/chromium exists. Needs root (CI and dev machines are).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install-chromium: /usr/bin/chromium is missing; run as root or: apt-get install -y chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
