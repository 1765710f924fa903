"""`python -m build` makes a wheel and an sdist that pass `twine check` and install in a fresh venv."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from mlflow_okr import __version__
from mlflow_okr.store.uris import INNER_SCHEMES

ROOT = Path(__file__).resolve().parent.parent
# What a clone has besides the project's files: never part of a build.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
    ".hypothesis", "mlflow.db", "mlruns", "demo-run",
)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel and sdist `python -m build` makes from a copy of the source tree."""
    root = tmp_path_factory.mktemp("build")
    source = root / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    out = root / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {
        "wheel": out / f"mlflow_okr-{__version__}-py3-none-any.whl",
        "sdist": out / f"mlflow_okr-{__version__}.tar.gz",
    }


def test_build_makes_a_wheel_and_an_sdist_that_pass_twine_check(dist):
    assert dist["wheel"].is_file() and dist["sdist"].is_file()
    twine = Path(sys.executable).with_name("twine")
    result = subprocess.run(
        [str(twine), "check", "--strict", str(dist["wheel"]), str(dist["sdist"])],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2


def test_the_wheel_carries_the_plugin_and_every_entry_point(dist):
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        entry_points = wheel.read(f"mlflow_okr-{__version__}.dist-info/entry_points.txt").decode()
    expected = {"mlflow_okr/__init__.py", "mlflow_okr/store/uris.py", "plugin_entrypoints/tracking_store.py"}
    assert expected <= names
    assert not any(name.startswith("tests/") for name in names)
    for scheme in INNER_SCHEMES:
        assert f"okr+{scheme} = plugin_entrypoints.tracking_store:okr_tracking_store" in entry_points
        assert f"okr+{scheme} = plugin_entrypoints.registry_store:okr_registry_store" in entry_points
    assert "mlflow-okr = mlflow_okr.cli:main" in entry_points


SMOKE = """
import sys
from mlflow import MlflowClient
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow_okr.store import OkrHooks
client = MlflowClient("okr+sqlite:///" + sys.argv[1])
store = client._tracking_client.store
assert isinstance(store, SqlAlchemyStore) and isinstance(store, OkrHooks), type(store).__mro__
print("hooked", client.create_experiment("smoke"))
"""


@pytest.mark.slow
def test_the_wheel_and_the_sdist_install_in_a_fresh_venv(dist, tmp_path: Path):
    """A new venv, packages from the index as a user gets them (minutes: MLflow and its dependencies)."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, cli = env_dir / "bin" / "python", env_dir / "bin" / "mlflow-okr"

    def run(*command: str | Path) -> str:
        result = subprocess.run([str(part) for part in command], cwd=tmp_path, capture_output=True,
                                text=True, timeout=1800)
        assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    for artifact in ("wheel", "sdist"):
        extra = () if artifact == "wheel" else ("--force-reinstall", "--no-deps")
        run(python, "-m", "pip", "install", "-q", *extra, dist[artifact])
        assert "Objectives and key results" in run(cli, "--help")
        run(cli, "init", "--force", tmp_path / "okrs.yaml")
        assert "valid" in run(cli, "validate", tmp_path / "okrs.yaml")
        assert run(python, "-c", SMOKE, tmp_path / f"{artifact}.db").split() == ["hooked", "1"]
