#!/usr/bin/env bash
# Debian's Java runtime for the Spark engine's tests (pyspark runs on a JVM; `make test` runs this).
# Idempotent: does nothing when a java >= 17 is already on PATH. Needs root (or password-less sudo) to install.
set -euo pipefail
if command -v java >/dev/null 2>&1; then
    major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
    if [ -n "$major" ] && [ "$major" -ge 17 ]; then
        exit 0
    fi
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        echo "install_java: no Java >= 17 and installing it needs root: apt-get install -y openjdk-17-jre-headless" >&2
        exit 1
    fi
fi
echo "install_java: installing Debian's openjdk-17-jre-headless (apt-get) ..." >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openjdk-17-jre-headless </dev/null >&2
command -v java >/dev/null 2>&1 || { echo "install_java: apt-get finished but java is not on PATH" >&2; exit 1; }
