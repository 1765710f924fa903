"""Commands that never talk to MLflow do not import it: `mlflow-okr --help` answers at once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Runs the real entry point in a fresh interpreter, then reports what it imported.
PROBE = """
import json, sys
from mlflow_okr.cli import main
sys.argv = ["mlflow-okr", *sys.argv[1:]]
try:
    main()
    code = 0
except SystemExit as exit:
    code = exit.code or 0
print(json.dumps({"exit": code, "mlflow": sorted(m for m in sys.modules if m.split(".")[0] == "mlflow")}),
      file=sys.stderr)
"""


def run_probe(tmp_path: Path, *args: str) -> tuple[dict, str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    return report, result.stdout


@pytest.mark.parametrize(
    "args",
    [("--help",), ("--version",), ("init",), ("schema",), ("ledger", "--help"), ("report", "--help")],
)
def test_commands_that_do_not_talk_to_mlflow_do_not_import_it(tmp_path: Path, args: tuple[str, ...]):
    report, output = run_probe(tmp_path, *args)
    assert report == {"exit": 0, "mlflow": []}, output
    if args == ("init",):
        assert (tmp_path / "okrs.yaml").is_file()
    if args == ("schema",):
        assert json.loads(output)["title"]


def test_a_command_that_talks_to_mlflow_still_works(tmp_path: Path, sqlite_template: Path):
    """The lazy imports load MLflow when a command needs it (and its errors still map to exit 2)."""
    shutil.copyfile(sqlite_template, tmp_path / "mlflow.db")
    report, output = run_probe(tmp_path, "status", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert report["exit"] == 2 and "mlflow" in report["mlflow"], output


def test_every_public_name_still_resolves():
    """The lazy exports are the same objects as before; `mlflow_okr.sync` stays the function."""
    import mlflow_okr
    import mlflow_okr.sync  # the submodule of the same name must not replace the function
    from mlflow_okr import api, ledger, results, spec

    assert mlflow_okr.sync is api.sync and mlflow_okr.status is api.status
    assert mlflow_okr.CycleStatus is results.CycleStatus and mlflow_okr.load_spec is spec.load_spec
    assert mlflow_okr.add_hypothesis is ledger.add_hypothesis
    assert all(getattr(mlflow_okr, name) is not None for name in mlflow_okr.__all__)
    assert set(mlflow_okr.__all__) <= set(dir(mlflow_okr))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        mlflow_okr.no_such_name  # noqa: B018


def test_mlflow_errors_still_become_exit_2_without_a_traceback():
    """handle_errors no longer imports MLflow up front; an MlflowException still maps to exit 2."""
    import click
    from click.testing import CliRunner
    from mlflow.exceptions import MlflowException

    from mlflow_okr.cli.common import handle_errors

    @click.command()
    @click.argument("kind")
    @handle_errors
    def fails(kind: str) -> None:
        if kind == "mlflow":
            raise MlflowException("RESOURCE_DOES_NOT_EXIST: run 'abc' not found")
        raise RuntimeError("a bug")

    result = CliRunner().invoke(fails, ["mlflow"])
    assert result.exit_code == 2
    assert result.output == "Error: MLflow: RESOURCE_DOES_NOT_EXIST: run 'abc' not found\n"
    result = CliRunner().invoke(fails, ["bug"])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
