"""Bad input everywhere: random okrs.yaml, hostile metric values, tags at MLflow's limits, unknown ids.

Every CLI call must end with exit 0 (fine), 1 (a check failed) or 2 (bad input, with a message),
never a traceback, and `status --format json` must always be strict JSON (no NaN or Infinity).
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _get_store
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_TAG_VAL_LENGTH

from mlflow_okr.cli import cli
from mlflow_okr.store import flush
from tests.conftest import IN_CYCLE_MS, make_run, okr_store_registered

CASES: Counter[str] = Counter()
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
AS_OF = ("--as-of", "2026-11-15")

VALID_SPEC = {
    "version": 1,
    "cycle": "2026-Q4",
    "status_thresholds": {"on_track": 0.7, "at_risk": 0.4},
    "objectives": [
        {
            "id": "quality",
            "title": "Better model",
            "category": "product",
            "key_results": [
                {
                    "id": "accuracy",
                    "metric": "acc",
                    "baseline": 0.5,
                    "target": 0.9,
                    "filter": "tags.stage = 'ab'",
                    "guardrails": [{"metric": "latency", "max": 50}],
                },
                {"id": "loss", "metric": "loss", "baseline": {"run_id": "0" * 32}, "target": "-10%"},
                {"id": "csat", "metric": "csat", "maintain": {"min": 4.0}},
                {"id": "hypotheses", "source": "ledger", "target": 3},
                {"id": "alerting", "source": "manual", "target": 1},
            ],
        }
    ],
}
SPEC_KEYS = sorted(
    {"version", "cycle", "status_thresholds", "objectives", "id", "title", "category", "owner", "key_results",
     "metric", "experiments", "filter", "baseline", "target", "aggregate", "weight", "guardrails", "maintain",
     "direction", "source", "min", "max", "run_id", "name", "start", "end", "linked_to", "unit", "notify"}
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["2026-Q4", "2026-13-45", "+5%", "-10%", "maximize", "best", "tags.x = 'y'", "a b"])
    | st.dates().map(str)
)
yaml_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(SPEC_KEYS) | st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)


def cli_result(runner: CliRunner, *args: str):
    """Run the CLI catching exceptions, so an escaped exception shows up as result.exception."""
    return runner.invoke(cli, list(args), catch_exceptions=True)


def assert_clean_exit(result, allowed: tuple[int, ...] = (0, 2)) -> None:
    """Exit status allowed, and no exception escaped (a traceback) other than click's own exit."""
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not escaped, f"traceback: {result.exception!r}\n{result.output}"
    assert result.exit_code in allowed, result.output
    if result.exit_code == 2:
        assert result.output.strip(), "exit 2 without a message"
        assert "Traceback" not in result.output


@pytest.fixture(scope="module", autouse=True)
def report_cases():
    yield
    print("\nfuzz cases tried: " + ", ".join(f"{name}={count}" for name, count in sorted(CASES.items())))


# ---------------------------------------------------------------------------------------------
# okrs.yaml


def validate(tmp_path: Path, text: str):
    path = tmp_path / "okrs.yaml"
    path.write_text(text, encoding="utf-8")
    return cli_result(CliRunner(), "validate", str(path))


@settings(FUZZ, max_examples=200)
@given(document=yaml_values)
def test_random_yaml_structures_validate_cleanly(tmp_path, document):
    CASES["yaml-structure"] += 1
    assert_clean_exit(validate(tmp_path, yaml.safe_dump(document, allow_unicode=True)))


@settings(FUZZ, max_examples=150)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
       | st.sampled_from(["", ":", "- - -", "{a: [", "!!python/object:os.system ls", "\x00", "a: *b"]))
def test_random_text_validates_cleanly(tmp_path, text):
    CASES["yaml-text"] += 1
    assert_clean_exit(validate(tmp_path, text))


def spec_paths(node, path=()):
    """Every (path) into a nested dict/list document, for mutation."""
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from spec_paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from spec_paths(value, (*path, index))


ALL_PATHS = list(spec_paths(VALID_SPEC))[1:]


@settings(FUZZ, max_examples=200)
@given(
    mutations=st.lists(
        st.tuples(st.sampled_from(ALL_PATHS), st.sampled_from(["replace", "delete", "add"]), yaml_values),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_valid_spec_validates_cleanly(tmp_path, mutations):
    CASES["yaml-mutation"] += 1
    document = copy.deepcopy(VALID_SPEC)
    for path, action, value in mutations:
        parent = document
        try:
            for step in path[:-1]:
                parent = parent[step]
            if action == "replace":
                parent[path[-1]] = value
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent["unknown_" + str(len(parent))] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    result = validate(tmp_path, yaml.safe_dump(document, allow_unicode=True))
    assert_clean_exit(result)


def test_valid_spec_is_valid(tmp_path):
    result = validate(tmp_path, yaml.safe_dump(VALID_SPEC))
    assert result.exit_code == 0, result.output
    assert "valid. Cycle 2026-Q4" in result.output


@settings(FUZZ, max_examples=60)
@given(
    kr_id=st.text(min_size=1, max_size=70).filter(lambda s: not (s.isascii() and s.islower() and s.isalnum()))
    | st.sampled_from(["Accuracy", "acc uracy", "-acc", "acc/1", "acc.kr", "acc'; DROP TABLE runs;--",
                       "$(rm -rf /)", "<script>", "a" * 65, "ácc", "acc\n", "../acc", "acc_1"])
)
def test_kr_ids_with_odd_characters_are_rejected(tmp_path, kr_id):
    CASES["kr-id"] += 1
    document = copy.deepcopy(VALID_SPEC)
    document["objectives"][0]["key_results"][0]["id"] = kr_id
    result = validate(tmp_path, yaml.safe_dump(document, allow_unicode=True))
    if kr_id.strip() and all(c.islower() or c.isdigit() or c == "-" for c in kr_id) and kr_id.isascii() \
            and kr_id[0] != "-" and len(kr_id) <= 64 and kr_id == kr_id.strip():
        return  # a legal slug after all
    assert_clean_exit(result, allowed=(2,))
    assert "key_results" in result.output and "id" in result.output


# ---------------------------------------------------------------------------------------------
# Hostile values through sync, the store and status


METRIC_SPEC = """
version: 1
cycle: 2026-Q4
objectives:
  - id: quality
    title: Better model
    category: product
    key_results:
      - id: best-acc
        metric: acc
        baseline: 0.5
        target: 0.9
        guardrails:
          - {metric: latency, max: 50}
      - id: mean-loss
        metric: loss
        aggregate: mean
        baseline: 10
        target: 1
      - id: total
        metric: items
        aggregate: sum
        baseline: 0
        target: 1000
      - id: keep
        metric: csat
        maintain: {min: 4}
"""
hostile_floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [math.nan, math.inf, -math.inf, 1.7976931348623157e308, -1.7976931348623157e308, 5e-324, -0.0, 0.0, 1e300]
)


def strict_json(text: str) -> dict:
    """Parse JSON that must not contain NaN or Infinity (not JSON, though Python emits them)."""

    def reject(constant: str):
        raise AssertionError(f"status JSON contains {constant}")

    return json.loads(text, parse_constant=reject)


@pytest.fixture
def published_store(tracking_uri, write_spec) -> str:
    result = cli_result(CliRunner(), "apply", str(write_spec(METRIC_SPEC)))
    assert result.exit_code == 0, result.output
    return tracking_uri


HOSTILE_WRITES = st.lists(
    st.tuples(st.sampled_from(["acc", "latency", "loss", "items", "csat"]), hostile_floats,
              st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    min_size=1,
    max_size=8,
)
END_STATUSES = st.sampled_from([None, "FINISHED", "FAILED", "KILLED"])


@settings(FUZZ, max_examples=12)
@given(writes=HOSTILE_WRITES, end_status=END_STATUSES)
def test_hostile_metric_values_never_break_sync_or_status(published_store, writes, end_status):
    check_hostile_writes(published_store, writes, end_status)


@pytest.mark.slow
@settings(FUZZ, max_examples=200)
@given(writes=HOSTILE_WRITES, end_status=END_STATUSES)
def test_hostile_metric_values_long(published_store, writes, end_status):
    check_hostile_writes(published_store, writes, end_status)


def check_hostile_writes(published_store: str, writes, end_status: str | None) -> None:
    """Write hostile values (through the okr+ store when installed); nothing may break or drift."""
    CASES["metric-values"] += 1
    writer_uri = ("okr+" + published_store) if okr_store_registered() else published_store
    writer = MlflowClient(writer_uri)
    existing = writer.get_experiment_by_name("fuzz")
    experiment_id = existing.experiment_id if existing else writer.create_experiment("fuzz")
    run = writer.create_run(experiment_id, start_time=IN_CYCLE_MS)
    for key, value, step in writes:
        writer.log_metric(run.info.run_id, key, value, timestamp=IN_CYCLE_MS + 1, step=step)
    writer.log_batch(run.info.run_id, metrics=[Metric(k, v, IN_CYCLE_MS + 2, s) for k, v, s in writes[:3]])
    if end_status:
        writer.set_terminated(run.info.run_id, end_status, end_time=IN_CYCLE_MS + 3)
    stored = MlflowClient(published_store).get_run(run.info.run_id).data.metrics
    assert set(stored) == {key for key, _, _ in writes}  # every user write landed

    runner = CliRunner()
    if okr_store_registered():
        flush(_get_store(writer_uri))  # the store settles KRs in the background within a second
    else:
        assert_clean_exit(cli_result(runner, "sync", *AS_OF), allowed=(0,))
    check = cli_result(runner, "sync", "--check", *AS_OF)
    assert_clean_exit(check, allowed=(0,))
    for output_format in ("json", "csv", "table"):
        result = cli_result(runner, "status", "--format", output_format, *AS_OF)
        assert_clean_exit(result, allowed=(0,))
    status = strict_json(cli_result(runner, "status", "--format", "json", *AS_OF).output)
    for objective in status["objectives"]:
        for kr in objective["key_results"]:
            assert 0.0 <= kr["progress"] <= 1.0
            assert kr["current"] is None or math.isfinite(kr["current"])


# ---------------------------------------------------------------------------------------------
# MLflow's length limits and ids that do not exist


def test_tags_and_keys_at_mlflow_limits(tracking_uri, write_spec):
    CASES["length-limits"] += 1
    long_metric = "m" * MAX_ENTITY_KEY_LENGTH
    long_value = "v" * (MAX_TAG_VAL_LENGTH - 1) + "'"
    spec = f"""
    version: 1
    cycle: 2026-Q4
    objectives:
      - id: limits
        title: {"T" * 2000}
        category: research
        key_results:
          - id: {"k" * 64}
            title: {"x" * 5000}
            metric: {long_metric}
            filter: "tags.stage = 'a'"
            baseline: 0
            target: 1
            guardrails:
              - {{metric: {"g" * MAX_ENTITY_KEY_LENGTH}, max: 1}}
    """
    runner = CliRunner()
    result = cli_result(runner, "apply", str(write_spec(spec)))
    assert_clean_exit(result, allowed=(0, 2))
    if result.exit_code == 2:
        assert "MLflow" in result.output or "long" in result.output
        return
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("limits")
    counted = make_run(client, experiment_id, {long_metric: 0.5, "g" * MAX_ENTITY_KEY_LENGTH: 0.5},
                       tags={"stage": "a", "note": "n" * MAX_TAG_VAL_LENGTH})
    breached = make_run(client, experiment_id, {long_metric: 0.9, "g" * MAX_ENTITY_KEY_LENGTH: 5},
                        tags={"stage": "a", "other": long_value})
    assert_clean_exit(cli_result(runner, "sync", *AS_OF), allowed=(0,))
    assert_clean_exit(cli_result(runner, "sync", "--check", *AS_OF), allowed=(0,))
    tags = client.get_run(breached).data.tags
    assert tags["okr.kr." + "k" * 64].startswith("excluded")
    assert len(tags["okr.kr." + "k" * 64]) <= MAX_TAG_VAL_LENGTH
    assert client.get_run(counted).data.tags["note"] == "n" * MAX_TAG_VAL_LENGTH
    status = strict_json(cli_result(runner, "status", "--format", "json", *AS_OF).output)
    assert status["objectives"][0]["key_results"][0]["current"] == 0.5


@pytest.mark.parametrize("run_id", ["0" * 32, "f" * 32, "not-a-run", "../../etc/passwd", "1' OR '1'='1"])
def test_baseline_run_that_does_not_exist_leaves_kr_not_started(tracking_uri, write_spec, run_id):
    CASES["missing-run-id"] += 1
    spec = f"""
    version: 1
    cycle: 2026-Q4
    objectives:
      - id: quality
        title: Better model
        category: product
        key_results:
          - id: f1
            metric: f1
            baseline: {{run_id: "{run_id}"}}
            target: "+5%"
    """
    runner = CliRunner()
    result = cli_result(runner, "apply", str(write_spec(spec)))
    if result.exit_code == 2:  # the spec may reject an id that is not a run id at all
        assert_clean_exit(result, allowed=(2,))
        assert "run_id" in result.output
        return
    assert_clean_exit(result, allowed=(0,))
    client = MlflowClient(tracking_uri)
    make_run(client, client.create_experiment("e"), {"f1": 0.9})
    assert_clean_exit(cli_result(runner, "sync", *AS_OF), allowed=(0,))
    assert_clean_exit(cli_result(runner, "sync", "--check", *AS_OF), allowed=(0,))
    status = strict_json(cli_result(runner, "status", "--format", "json", *AS_OF).output)
    kr = status["objectives"][0]["key_results"][0]
    assert kr["status"] == "not-started" and kr["progress"] == 0.0 and kr["baseline"] is None


def test_checkin_on_unknown_or_non_manual_kr_is_bad_input(published_store):
    runner = CliRunner()
    for kr_id in ["nope", "0" * 32, "best-acc'--", "", "keep", "../keep", "KEEP"]:
        CASES["checkin-id"] += 1
        result = cli_result(runner, "checkin", kr_id, "1")
        assert_clean_exit(result, allowed=(2,))
        assert "KR" in result.output


def test_checkin_with_hostile_values_is_bad_input(tracking_uri, write_spec):
    spec = """
    version: 1
    cycle: 2026-Q4
    objectives:
      - id: ops
        title: Ops
        category: operational
        key_results:
          - {id: alerting, source: manual, target: 1}
    """
    runner = CliRunner()
    assert cli_result(runner, "apply", str(write_spec(spec))).exit_code == 0
    for value in ["nan", "inf", "-inf", "1e999", "abc", "", "0x10"]:
        CASES["checkin-value"] += 1
        result = cli_result(runner, "checkin", "alerting", value)
        assert_clean_exit(result, allowed=(2,))
    assert_clean_exit(cli_result(runner, "checkin", "alerting", "--", "-1e300"), allowed=(0,))
    status = strict_json(cli_result(runner, "status", "--format", "json", *AS_OF).output)
    kr = status["objectives"][0]["key_results"][0]
    assert kr["current"] == -1e300 and kr["progress"] == 0.0
    assert_clean_exit(cli_result(runner, "sync", "--check", *AS_OF), allowed=(0,))
