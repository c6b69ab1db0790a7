#!/usr/bin/env bash
# Installs the peer libraries of bench/btyd.py into isolated venvs under bench/.peers/ (git-ignored).
#
# Two venvs, because the peers cannot share one: lifetimes 0.11.3 (2020) needs numpy<2 and
# pandas<2, while pymc-marketing (0.19.x) requires numpy>=2.
#   bench/.peers/lifetimes  lifetimes==0.11.3 with numpy<2, pandas<2, scipy<1.12
#   bench/.peers/pymc       pymc-marketing (MAP fits; pytensor compiles C with the system g++)
#
# Idempotent: a venv whose marker file exists is left alone; delete bench/.peers to redo it.
# Usage: bash bench/setup_peers.sh [lifetimes|pymc]...   (no argument: both)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS="$HERE/.peers"
PY="${PYTHON:-python3}"
mkdir -p "$PEERS"

LIFETIMES_PKGS=("lifetimes==0.11.3" "numpy>=1.26,<2" "pandas>=1.5,<2" "scipy>=1.10,<1.12" "autograd<1.8")
PYMC_PKGS=("pymc-marketing==0.19.2")

install() {  # name, packages...
    local name="$1"; shift
    local venv="$PEERS/$name"
    if [[ -f "$venv/.installed" ]]; then
        echo "peer venv $venv: already installed"
        return 0
    fi
    echo "peer venv $venv: installing $*"
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "$@"
    "$venv/bin/python" -m pip freeze > "$venv/.installed"
    echo "peer venv $venv: done"
}

targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(lifetimes pymc)
for t in "${targets[@]}"; do
    case "$t" in
        lifetimes) install lifetimes "${LIFETIMES_PKGS[@]}" ;;
        pymc)
            install pymc "${PYMC_PKGS[@]}"
            # first import compiles pytensor's C helpers; do it here, not inside a timed run
            "$PEERS/pymc/bin/python" -c "import pymc_marketing.clv" >/dev/null 2>&1 || true
            ;;
        *) echo "unknown peer '$t' (expected lifetimes or pymc)" >&2; exit 2 ;;
    esac
done
