"""mlflow-okr opens no way around MLflow's auth, and never evaluates text it reads.

A real `mlflow server --app-name basic-auth` fronts an okr+ backend. A user without READ on a
source experiment must get none of its run names, run ids, tags or metric values from any
mlflow-okr command. The KR aggregates (current value, progress) live in `okr/<cycle>` and are
governed by that experiment's own permission: that is the documented choice.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

import mlflow_okr
from mlflow_okr.cli import cli
from tests.conftest import make_run, okr_store_registered

PACKAGE_DIR = Path(mlflow_okr.__file__).parent
ADMIN, ADMIN_PASSWORD = "admin", "admin-password-1234"
READER, READER_PASSWORD = "reader", "reader-password-1234"

SPEC = """
version: 1
cycle: 2026-Q4
objectives:
  - id: quality
    title: Better model
    category: product
    key_results:
      - id: public-acc
        metric: public_acc
        experiments: ["public-*"]
        baseline: 0.5
        target: 1.0
      - id: secret-acc
        metric: secret_acc
        experiments: ["secret-*"]
        baseline: 0.5
        target: 1.0
      - id: any-acc
        metric: shared_acc
        baseline: 0.5
        target: 1.0
"""
# Distinctive values that only the secret experiment holds. The KR aggregates (the best value)
# are visible to readers of okr/<cycle> by design, so the secrets are everything else.
SECRET_RUN_NAME = "zz-secret-run-name"
SECRET_TAG_VALUE = "zz-secret-tag-value"
SECRET_OTHER_METRIC = 0.777123  # a metric no KR uses
SECRET_RUNNER_UP = 0.612345  # a KR metric value that is not the aggregate


def as_user(username: str, password: str, url: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password,
            "MLFLOW_TRACKING_URI": url}


def as_admin(url: str, monkeypatch) -> tuple[dict[str, str], MlflowClient]:
    """The admin's environment, set for this process too, and a client as the admin."""
    admin_env = as_user(ADMIN, ADMIN_PASSWORD, url)
    for key, value in admin_env.items():
        monkeypatch.setenv(key, value)
    return admin_env, MlflowClient(url)


def run_cli(env: dict[str, str], *args: str):
    """The CLI as that user would run it: their credentials in MLflow's usual environment variables."""
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=True)
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not escaped, f"traceback: {result.exception!r}\n{result.output}"
    return result


@pytest.fixture
def auth_server(tmp_path, monkeypatch):
    """A basic-auth mlflow server over an okr+sqlite (or plain sqlite) backend, with two users."""
    servers = pytest.importorskip("tests.servers", reason="tests/servers.py (the server helper) is missing")
    config = servers.basic_auth_config(tmp_path, ADMIN, ADMIN_PASSWORD)
    scheme = "okr+sqlite" if okr_store_registered() else "sqlite"
    backend = f"{scheme}:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with servers.mlflow_server(
        backend, tmp_path / "server", app_name="basic-auth",
        extra_env={"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-key"},
    ) as server:
        yield server.url


def test_reader_sees_nothing_of_an_experiment_it_cannot_read(auth_server, tmp_path, monkeypatch):
    from mlflow.server import get_app_client

    url = auth_server
    admin_env, admin = as_admin(url, monkeypatch)
    public_id = admin.create_experiment("public-train")
    secret_id = admin.create_experiment("secret-train")
    public_run = make_run(admin, public_id, {"public_acc": 0.7, "shared_acc": 0.6}, tags={"kind": "open"})
    secret_run = make_run(
        admin, secret_id, {"secret_acc": 0.9, "shared_acc": 0.95, "secret_loss": SECRET_OTHER_METRIC},
        tags={"kind": SECRET_TAG_VALUE, "okr.hypothesis": "bigger"}, name=SECRET_RUN_NAME,
    )
    runner_up = make_run(admin, secret_id, {"secret_acc": SECRET_RUNNER_UP, "shared_acc": SECRET_RUNNER_UP})
    spec_path = tmp_path / "okrs.yaml"
    spec_path.write_text(SPEC.lstrip(), encoding="utf-8")
    result = run_cli(admin_env, "apply", str(spec_path))
    assert result.exit_code == 0, result.output
    result = run_cli(admin_env, "sync", "--check", "--as-of", "2026-11-15")
    assert result.exit_code == 0, result.output
    result = run_cli(admin_env, "ledger", "add", "A bigger model lifts accuracy", "--id", "bigger",
                     "--kr", "secret-acc")
    assert result.exit_code == 0, result.output

    auth = get_app_client("basic-auth", tracking_uri=url)
    auth.create_user(READER, READER_PASSWORD)
    okr_experiment = admin.get_experiment_by_name("okr/2026-Q4").experiment_id
    ledger_experiment = admin.get_experiment_by_name("okr/ledger").experiment_id
    for experiment_id in (public_id, okr_experiment, ledger_experiment):
        auth.grant_user_permission(READER, "experiment", experiment_id, "READ")

    reader_env = as_user(READER, READER_PASSWORD, url)
    secrets = [secret_run, runner_up, SECRET_RUN_NAME, SECRET_TAG_VALUE, "0.777", "0.6123", "secret_loss"]
    outputs = {}
    outputs["status"] = run_cli(reader_env, "status", "--format", "json", "--as-of", "2026-11-15")
    assert outputs["status"].exit_code == 0, outputs["status"].output
    outputs["status-table"] = run_cli(reader_env, "status", "--as-of", "2026-11-15")
    outputs["status-csv"] = run_cli(reader_env, "status", "--format", "csv", "--as-of", "2026-11-15")
    outputs["sync-check"] = run_cli(reader_env, "sync", "--check", "--as-of", "2026-11-15")
    outputs["sync"] = run_cli(reader_env, "sync", "--as-of", "2026-11-15")
    for report_format in ("json", "md", "html", "csv"):
        outputs[f"report-{report_format}"] = run_cli(
            reader_env, "report", "--format", report_format, "--as-of", "2026-11-15"
        )
    outputs["ledger-list"] = run_cli(reader_env, "ledger", "list", "--format", "json")
    outputs["ledger-show"] = run_cli(reader_env, "ledger", "show", "bigger", "--format", "json")
    assert outputs["ledger-show"].exit_code == 0, outputs["ledger-show"].output
    assert outputs["report-json"].exit_code == 0, outputs["report-json"].output
    for name, result in outputs.items():
        for secret in secrets:
            assert secret not in result.output, f"{name} leaked {secret!r}:\n{result.output}"

    # The reader still sees what it may read: the public KR and its best run.
    status = json.loads(outputs["status"].output)
    krs = {kr["id"]: kr for objective in status["objectives"] for kr in objective["key_results"]}
    assert krs["public-acc"]["current"] == 0.7
    assert krs["public-acc"]["best_run_id"] == public_run
    # Documented choice: the KR aggregate itself is governed by okr/<cycle>'s permission,
    # but the best run is named only to those who may read it.
    assert krs["secret-acc"]["current"] == 0.9 and krs["secret-acc"]["best_run_id"] is None
    assert krs["any-acc"]["current"] == 0.95 and krs["any-acc"]["best_run_id"] is None
    # The reader's view of the sources is partial, so its check differs, without naming runs.
    assert outputs["sync-check"].exit_code == 1
    assert "best_run_id stored '(a run you may not read)'" in outputs["sync-check"].output
    # Its sync cannot rewrite KR state it may only read; the admin finds the state intact.
    assert outputs["sync"].exit_code == 2 and "MLflow" in outputs["sync"].output
    after = run_cli(admin_env, "sync", "--check", "--as-of", "2026-11-15")
    assert after.exit_code == 0, after.output


# ---------------------------------------------------------------------------------------------
# Nothing read from okrs.yaml, a tag or a run is ever evaluated, run by a shell or built into SQL.

SOURCE_FILES = [
    *sorted(PACKAGE_DIR.rglob("*.py")),
    *sorted((PACKAGE_DIR.parent / "plugin_entrypoints").rglob("*.py")),
]
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "execfile", "input"}
FORBIDDEN_ATTRIBUTE_CALLS = {
    ("os", "system"), ("os", "popen"), ("yaml", "unsafe_load"), ("yaml", "full_load"),
    ("pickle", "loads"), ("pickle", "load"), ("marshal", "loads"), ("subprocess", "getoutput"),
}
FORBIDDEN_IMPORTS = {"pickle", "marshal", "shelve", "sqlite3", "sqlalchemy", "psycopg", "psycopg2"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "SpecLoader", "BaseLoader"}


def parsed_sources():
    for path in SOURCE_FILES:
        yield path.relative_to(PACKAGE_DIR.parent), ast.parse(path.read_text(encoding="utf-8"))


def is_built_string(node: ast.AST) -> bool:
    """An f-string, a concatenation, a %-format or a .format(): text built at run time."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(part, ast.FormattedValue) for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return True
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"


def test_sources_are_found():
    names = {path.name for path in SOURCE_FILES}
    assert {"spec.py", "sync.py", "state.py", "tracking_store.py"} <= names


def test_no_text_is_ever_evaluated_or_run_by_a_shell():
    problems = []
    for path, tree in parsed_sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                problems.append(f"{path}:{node.lineno}: {func.id}()")
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                if (func.value.id, func.attr) in FORBIDDEN_ATTRIBUTE_CALLS:
                    problems.append(f"{path}:{node.lineno}: {func.value.id}.{func.attr}()")
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                ):
                    problems.append(f"{path}:{node.lineno}: shell=...")
    assert problems == []


def test_yaml_is_only_read_with_safe_loaders():
    problems = []
    for path, tree in parsed_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "load", "load_all", "compose", "compose_all"
            ) and isinstance(node.func.value, ast.Name) and node.func.value.id == "yaml":
                loader = next((k.value for k in node.keywords if k.arg == "Loader"), None)
                name = getattr(loader, "id", getattr(loader, "attr", None))
                if name not in SAFE_YAML_LOADERS:
                    problems.append(f"{path}:{node.lineno}: yaml.{node.func.attr} with Loader={name}")
    assert problems == []
    import yaml

    from mlflow_okr.spec import SpecLoader

    assert issubclass(SpecLoader, yaml.SafeLoader)


# The modules that use the database itself: SQLAlchemy expressions over MLflow's own models,
# bound parameters only (DESIGN section 4). Everything else goes through MLflow's client.
# The lean readers and the settling lock: the only modules that may use SQLAlchemy (Core
# expressions, never text).
SQL_READERS = ("mlflow_okr/facts.py", "mlflow_okr/effort_reads.py", "mlflow_okr/store/settling_lock.py")


def test_no_sql_is_built_from_text():
    """No SQL text anywhere; SQLAlchemy only in the lean readers, and no `text()` there either."""
    problems = []
    for path, tree in parsed_sources():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                    names = []
                else:
                    modules = [node.module or ""]
                    names = [alias.name for alias in node.names]
                for module in modules:
                    reader = str(path).endswith(SQL_READERS)
                    allowed = reader and module == "sqlalchemy" and "text" not in names
                    if module.split(".")[0] in FORBIDDEN_IMPORTS and not allowed:
                        problems.append(f"{path}:{node.lineno}: imports {module}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "execute", "executemany", "executescript", "text"
            ) and node.args and is_built_string(node.args[0]):
                problems.append(f"{path}:{node.lineno}: {node.func.attr}() of a built string")
    assert problems == []


def test_html_output_escapes_user_text():
    """Every module that writes HTML escapes with html.escape; none turns escaping off."""
    for path in SOURCE_FILES:
        text = path.read_text(encoding="utf-8")
        if "<html" in text.lower() or "<table" in text.lower():
            assert "html.escape" in text, f"{path} writes HTML without html.escape"
        assert "autoescape=False" not in text.replace(" ", ""), path
        assert "Markup(" not in text, path


def test_hostile_text_in_okrs_yaml_stays_text(tmp_path, tracking_uri):
    """Shell, SQL, template and YAML-tag payloads in titles and filters are stored verbatim, never run."""
    marker = tmp_path / "pwned"
    payloads = [
        f"$(touch {marker})", f"`touch {marker}`", "'; DROP TABLE runs; --", "{{7*7}}",
        "<script>alert(1)</script>",
        "__import__('os').system('touch " + str(marker) + "')",
    ]
    objectives = "\n".join(
        f"""  - id: o{index}
    title: {json.dumps(payload)}
    category: research
    key_results:
      - id: k{index}
        title: {json.dumps(payload)}
        metric: {json.dumps("m" + str(index))}
        filter: {json.dumps("tags.note = '" + payload.replace("'", "") + "'")}
        baseline: 0
        target: 1"""
        for index, payload in enumerate(payloads)
    )
    spec_path = tmp_path / "okrs.yaml"
    spec_path.write_text(f"version: 1\ncycle: 2026-Q4\nobjectives:\n{objectives}\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(cli, ["apply", str(spec_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["status", "--format", "json", "--as-of", "2026-11-15"])
    status = json.loads(result.output)
    assert [o["title"] for o in status["objectives"]] == payloads
    assert not marker.exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"version: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    result = runner.invoke(cli, ["validate", str(bad)])
    assert result.exit_code == 2 and not marker.exists()


TEAM_SPEC = """\
version: 1
team: {team}
cycle: 2026-Q4
objectives:
  - id: {objective}
    title: {title}
    category: operational
    key_results:
      - {{id: {kr}, source: manual, target: 10}}
"""


def test_a_team_lead_writes_its_own_set_and_not_another_teams(auth_server, tmp_path, monkeypatch):
    from mlflow.server import get_app_client

    url = auth_server
    admin_env, admin = as_admin(url, monkeypatch)
    paths = {}
    for team, objective, kr in (("team-a", "alerts", "alerts-live"), ("team-b", "fraud", "fraud-rules")):
        paths[team] = tmp_path / f"{team}.yaml"
        paths[team].write_text(TEAM_SPEC.format(team=team, objective=objective, title=objective, kr=kr))
        result = run_cli(admin_env, "apply", str(paths[team]))
        assert result.exit_code == 0, result.output
    auth = get_app_client("basic-auth", tracking_uri=url)
    auth.create_user(READER, READER_PASSWORD)
    team_a = admin.get_experiment_by_name("okr/2026-Q4/team-a").experiment_id
    team_b = admin.get_experiment_by_name("okr/2026-Q4/team-b").experiment_id
    auth.grant_user_permission(READER, "experiment", team_a, "EDIT")
    auth.grant_user_permission(READER, "experiment", team_b, "READ")
    lead_env = as_user(READER, READER_PASSWORD, url)

    assert run_cli(lead_env, "checkin", "alerts-live", "3").exit_code == 0
    refused = run_cli(lead_env, "checkin", "fraud-rules", "7")
    assert refused.exit_code == 2 and "Permission denied" in refused.output, refused.output
    paths["team-b"].write_text(paths["team-b"].read_text().replace("title: fraud", "title: taken over"))
    refused = run_cli(lead_env, "apply", str(paths["team-b"]))
    assert refused.exit_code == 2 and "Permission denied" in refused.output, refused.output

    status = json.loads(run_cli(admin_env, "status", "--format", "json", "--as-of", "2026-11-15").output)
    objectives = {o["id"]: o for o in status["objectives"]}
    assert objectives["alerts"]["key_results"][0]["current"] == 3.0
    assert objectives["fraud"]["key_results"][0]["current"] is None
    assert objectives["fraud"]["title"] == "fraud"
