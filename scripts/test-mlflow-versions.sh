#!/usr/bin/env bash
# Run the store, semantics, live and server tests against given MLflow releases, one venv per
# release. The server tests cover both deployments (--app-name okr over a plain URI, okr+ URIs),
# MLflow's job runner and trace rollups behind it, restarts, and workspaces.
#
#   bash scripts/test-mlflow-versions.sh                 # the same as: oldest newest
#   bash scripts/test-mlflow-versions.sh oldest          # the lower bound in setup.cfg (mlflow>=X)
#   bash scripts/test-mlflow-versions.sh 3.16.0 3.17.2   # these releases (3.16 means 3.16.0)
#
# "newest" is the newest MLflow that pip installs with the package, checked again on every run.
# A release below setup.cfg's lower bound conflicts with it: lower the bound to try one.
# Venvs are kept under $MLFLOW_OKR_VERSIONS_CACHE (default ~/.cache/mlflow-okr/mlflow-versions)
# and reinstalled when setup.cfg changes. PYTEST_ADDOPTS passes options to pytest (e.g. "-x").
# Exit status: 0 if every release passed, 1 if one failed or could not be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

TEST_FILES=(
  tests/test_store.py tests/test_mlflow_semantics.py tests/test_sync.py
  tests/test_store_server.py tests/test_server_deployment.py tests/test_workspaces.py
)
CACHE_DIR="${MLFLOW_OKR_VERSIONS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlflow-okr/mlflow-versions}"

lower_bound() {
  # install_requires holds exactly one "mlflow>=X" line.
  sed -n 's/^[[:space:]]*mlflow>=\([0-9][0-9.]*\).*/\1/p' setup.cfg | head -n 1
}

# Install mlflow-okr with its test extras and the MLflow requirement $2 into venv $1, unless the
# venv already holds them for this setup.cfg; "newest" venvs are upgraded on every run. A kept venv
# may have been made from another checkout of the project, so its editable install is pointed at
# this one every run (--no-deps: a few seconds), and checked from outside the checkout, where
# pytest's rootdir on sys.path cannot hide a stale one (the server subprocesses import from it).
install() {
  local venv="$1" requirement="$2" upgrade="$3"
  local stamp="$venv/.mlflow-okr-setup-cfg" setup_hash
  setup_hash="$(sha256sum setup.cfg | cut -d' ' -f1)"
  # Called as an if condition, where set -e does not apply: each step says || return 1.
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$setup_hash" ]; then
    if [ "$upgrade" = yes ]; then
      "$venv/bin/pip" install -q --upgrade "$requirement" -e ".[test]" || return 1
    else
      "$venv/bin/pip" install -q --no-deps -e . || return 1
    fi
  else
    rm -rf "$venv"
    python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install -q --upgrade pip || return 1
    "$venv/bin/pip" install -q "$requirement" -e ".[test]" || return 1
    echo "$setup_hash" >"$stamp"
  fi
  imports_from_here "$venv"
}

# Whether venv $1 imports mlflow_okr and its entry-point modules from this checkout.
imports_from_here() {
  local here found
  here="$(pwd -P)"
  found="$(cd / && "$1/bin/python" -c '
import os, mlflow_okr, plugin_entrypoints
print(" ".join(os.path.realpath(os.path.dirname(m.__file__)) for m in (mlflow_okr, plugin_entrypoints)))
')" || return 1
  if [ "$found" != "$here/mlflow_okr $here/plugin_entrypoints" ]; then
    echo "error: $1 imports mlflow-okr from $found, not from $here" >&2
    return 1
  fi
}

[ $# -gt 0 ] || set -- oldest newest
mkdir -p "$CACHE_DIR"
passed=()
failed=()
for name in "$@"; do
  case "$name" in
    oldest)
      version="$(lower_bound)"
      if [ -z "$version" ]; then
        echo "error: no 'mlflow>=X' line in setup.cfg's install_requires" >&2
        exit 2
      fi
      requirement="mlflow==$version" venv="$CACHE_DIR/mlflow-$version" upgrade=no ;;
    newest) requirement="mlflow" venv="$CACHE_DIR/mlflow-newest" upgrade=yes ;;
    *) requirement="mlflow==$name" venv="$CACHE_DIR/mlflow-$name" upgrade=no ;;
  esac
  echo "== $requirement ($venv)"
  if ! install "$venv" "$requirement" "$upgrade"; then
    echo "== $requirement could not be installed"
    failed+=("$requirement (not installed)")
    continue
  fi
  version="$("$venv/bin/python" -c 'import mlflow; print(mlflow.__version__)')"
  echo "== MLflow $version installed"
  start=$SECONDS
  if "$venv/bin/python" -m pytest -q -p no:cacheprovider "${TEST_FILES[@]}"; then
    passed+=("$version")
  else
    failed+=("$version")
  fi
  echo "== MLflow $version: tests took $((SECONDS - start)) s"
done

echo "passed: ${passed[*]:-none}"
echo "failed: $(IFS=,; echo "${failed[*]:-none}")"
[ ${#failed[@]} -eq 0 ]
