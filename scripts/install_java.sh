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
bash "$(dirname "$0")/apt_install.sh" openjdk-17-jre-headless
command -v java >/dev/null 2>&1 || { echo "install_java: apt-get finished but java is not on PATH" >&2; exit 1; }
