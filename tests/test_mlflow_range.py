"""The MLflow releases mlflow-okr is tested on: setup.cfg, TESTED_MLFLOW, the README and the docs agree,
and the installed MLflow is not newer than the newest release tested (a new release pip resolves
fails here until scripts/test-mlflow-versions.sh has run on it)."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
from packaging.version import Version

from mlflow_okr.compat import TESTED_MLFLOW

ROOT = Path(__file__).resolve().parent.parent


def test_setup_cfg_allows_from_the_oldest_release_tested() -> None:
    setup = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    bounds = re.findall(r"^\s*mlflow>=([0-9.]+)\s*$", setup, flags=re.MULTILINE)
    assert [Version(bound) for bound in bounds] == [Version(TESTED_MLFLOW[0])]


def test_readme_and_docs_name_the_tested_range() -> None:
    for page in ("README.md", "docs/contributing.md"):
        text = (ROOT / page).read_text(encoding="utf-8")
        assert f"MLflow {TESTED_MLFLOW[0]} to {TESTED_MLFLOW[1]}" in text, page


def test_installed_mlflow_is_within_the_tested_range() -> None:
    installed = Version(mlflow.__version__).release[:3]
    oldest, newest = (Version(version).release for version in TESTED_MLFLOW)
    assert oldest <= installed, f"MLflow {mlflow.__version__} is older than setup.cfg allows"
    # A patch release of the newest minor tested is covered; a new minor release is not yet.
    assert installed[:2] <= newest[:2], (
        f"MLflow {mlflow.__version__} is newer than the newest release tested ({TESTED_MLFLOW[1]}): "
        "run `bash scripts/test-mlflow-versions.sh newest`, then raise TESTED_MLFLOW in "
        "mlflow_okr/compat.py and the range in the README and docs/contributing.md"
    )
