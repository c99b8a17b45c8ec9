#!/usr/bin/env bash
# ctrjax entry point.
#   ./run.sh CONFIG[:ARG] [--config.key=value ...]   run an experiment (or a grid) defined by a config file
#   ./run.sh report GRID_CONFIG[:ARG]                a grid's tables and figures from the runs finished so far
#   ./run.sh tune CONFIG[:ARG] [--trials N] [--timeout S]   tune on valid AUC (Optuna), then seeds 0-4 on test
#   ./run.sh eval WORKDIR                            reload the best checkpoint of WORKDIR, re-evaluate test
#   ./run.sh test [pytest args]                      run the test suite
# On first use it creates .venv with Python >= 3.12 and installs the pinned dependencies.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV=.venv

find_python() {
  local candidates=(python3.12 python3 python3.13)  # 3.12 first: the GPU image runs 3.12
  local c
  for c in "${candidates[@]}"; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    local v
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])(\.|$)' | sort -V); do
      local p; p="$(pyenv root)/versions/$v/bin/python3"
      if [ -x "$p" ]; then echo "$p"; return 0; fi
    done
  fi
  return 1
}

ensure_venv() {
  local stamp="$VENV/.ctrjax-installed"
  if [ -f "$stamp" ] && cmp -s "$stamp" pyproject.toml; then return 0; fi
  local py
  if ! py="$(find_python)"; then
    echo "run.sh: ctrjax needs Python >= 3.12 (jax >= 0.11 and flax >= 0.12.9 require it)." >&2
    echo "run.sh: none found on PATH (python3.13, python3.12, python3) or in pyenv; install one, e.g. 'pyenv install 3.12'." >&2
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "run.sh: creating $VENV with $py ($("$py" --version))" >&2
    "$py" -m venv "$VENV"
  fi
  echo "run.sh: installing pinned dependencies into $VENV (first run only; a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[test]'
  cp pyproject.toml "$stamp"
}

ensure_venv
PY="$VENV/bin/python"
export PYTHONUNBUFFERED=1

case "${1:-}" in
  "" | -h | --help)
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  test)
    shift
    exec "$PY" -m pytest "$@" ;;
  eval)
    shift
    exec "$PY" -m experiments.main eval "$@" ;;
  report)
    shift
    cfg="${1:?usage: ./run.sh report GRID_CONFIG[:ARG] [--config.key=value ...]}"; shift
    exec "$PY" -m experiments.main report --config="$cfg" "$@" ;;
  tune)
    shift
    cfg="${1:?usage: ./run.sh tune CONFIG[:ARG] [--trials N] [--timeout S] [--config.key=value ...]}"; shift
    exec "$PY" -m experiments.main tune --config="$cfg" "$@" ;;
  *)
    cfg="$1"; shift
    exec "$PY" -m experiments.main run --config="$cfg" "$@" ;;
esac
