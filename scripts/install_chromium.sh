#!/usr/bin/env bash
# Debian's chromium for the browser tests and `loyalist report --pdf` (`make test` runs this).
# Idempotent: does nothing when /usr/bin/chromium exists. Needs root (or password-less sudo) to install.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        echo "install_chromium: /usr/bin/chromium is missing and installing it needs root: apt-get install -y chromium" >&2
        exit 1
    fi
fi
echo "install_chromium: installing Debian's chromium (apt-get) ..." >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium </dev/null >&2
[ -x /usr/bin/chromium ] || { echo "install_chromium: apt-get finished but /usr/bin/chromium is missing" >&2; exit 1; }
