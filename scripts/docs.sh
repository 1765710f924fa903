#!/usr/bin/env bash
# Install mlflow-okr with its test dependencies (MkDocs, Material, mkdocstrings) into .venv and
# build the documentation site into site/; extra arguments go to `mkdocs build`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[test]"
.venv/bin/mkdocs build --strict "$@"
