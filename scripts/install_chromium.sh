#!/usr/bin/env bash
# Debian's chromium for the browser tests and `loyalist report --pdf` (`make test` runs this).
# Idempotent: does nothing when /usr/bin/chromium exists. Needs root (or password-less sudo) to install.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
bash "$(dirname "$0")/apt_install.sh" chromium
[ -x /usr/bin/chromium ] || { echo "install_chromium: apt-get finished but /usr/bin/chromium is missing" >&2; exit 1; }
