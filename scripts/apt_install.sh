#!/usr/bin/env bash
# apt-get install the given Debian packages, as root or with password-less sudo (used by the install_* scripts).
set -euo pipefail
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        echo "apt_install: installing $* needs root: apt-get install -y $*" >&2
        exit 1
    fi
fi
echo "apt_install: installing Debian's $* (apt-get) ..." >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null >&2
