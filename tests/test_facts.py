"""The lean SQL fact reader against MLflow's own search_runs, on a real SQLite store."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

import mlflow_okr.compute as compute
import mlflow_okr.facts as facts
from mlflow_okr import state
from mlflow_okr.compute import compute_key_results, tally_texts
from mlflow_okr.facts import FactKeys, SearchFacts, SqlFacts, reader_for
from tests.conftest import IN_CYCLE_MS, invoke

START, END = IN_CYCLE_MS - 10**9, IN_CYCLE_MS + 10**9
KEYS = FactKeys(
    metrics=frozenset({"acc", "latency"}),
    tags=frozenset({"stage", "okr.kr.acc"}),
    params=frozenset({"seed"}),
)


def view(run) -> tuple:
    """What scoring reads of a run, limited to KEYS, from a Run or a lean view alike."""
    info, data = run.info, run.data

    def pick(values: dict, keys: frozenset[str]) -> dict:
        return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v)
                for k, v in values.items() if k in keys}

    return (
        info.run_id, info.run_name, info.experiment_id, info.status, info.start_time, info.end_time,
        info.lifecycle_stage, info.user_id, info.artifact_uri,
        pick(data.metrics, KEYS.metrics), pick(data.tags, KEYS.tags), pick(data.params, KEYS.params),
    )


@pytest.fixture
def store_runs(client: MlflowClient) -> dict[str, str]:
    """Runs of every shape: NaN and infinite values, tags, params, deleted, out of the window."""
    first = client.create_experiment("facts-a")
    second = client.create_experiment("facts-b")
    runs = {}

    def run(name: str, experiment: str, start: int, metrics=None, tags=None, params=None, end=None):
        created = client.create_run(experiment, start_time=start, tags=tags or {}, run_name=name)
        run_id = created.info.run_id
        for key, value in (metrics or {}).items():
            client.log_metric(run_id, key, value, timestamp=start + 1)
        for key, value in (params or {}).items():
            client.log_param(run_id, key, value)
        if end:
            client.set_terminated(run_id, end, end_time=start + 5)
        runs[name] = run_id
        return run_id

    run("plain", first, IN_CYCLE_MS, {"acc": 0.9733333333333334, "latency": 12.0, "other": 1.0},
        {"stage": "prod", "unrelated": "x"}, {"seed": "7", "lr": "0.1"}, "FINISHED")
    run("nan", first, IN_CYCLE_MS + 1, {"acc": float("nan"), "latency": float("inf")}, end="FAILED")
    run("bare", second, IN_CYCLE_MS + 2)
    run("early", first, START - 1, {"acc": 0.5})
    run("late", second, END + 1, {"acc": 0.5})
    deleted = run("deleted", second, IN_CYCLE_MS + 3, {"acc": 0.1, "latency": -3e-7})
    client.delete_run(deleted)
    for index in range(7):  # more runs than one chunk, when chunks are small
        run(f"many-{index}", second, IN_CYCLE_MS + 10 + index, {"acc": index / 7}, {"okr.kr.acc": "counted"})
    runs["experiments"] = [first, second]  # type: ignore[assignment]
    return runs


# A chunk's metrics, tags and params read joined with the runs table, and by run id alone (the
# rows of the runs out of the window or deleted, whose ids fall among the chunk's, passed over).
@pytest.mark.parametrize("dense_chunk", [0, 100])
def test_sql_scan_reads_what_search_runs_reads(client, store_runs, monkeypatch, dense_chunk) -> None:
    monkeypatch.setattr(facts, "SCAN_CHUNK", 3)  # several chunks, and one cut inside them
    monkeypatch.setattr(facts, "DENSE_CHUNK", dense_chunk)
    experiments = store_runs["experiments"]
    searched = sorted(view(run) for run in SearchFacts(client).scan(experiments, START, END, KEYS))
    sql = [view(run) for run in SqlFacts(client._tracking_client.store).scan(experiments, START, END, KEYS)]
    assert sorted(sql) == searched
    assert [row[0] for row in sql] == sorted(row[0] for row in sql)  # by run id, chunk after chunk
    names = {row[1] for row in sql}
    assert names == {"plain", "nan", "bare"} | {f"many-{index}" for index in range(7)}
    plain = next(row for row in sql if row[1] == "plain")
    assert plain[9:] == ({"acc": 0.9733333333333334, "latency": 12.0}, {"stage": "prod"}, {"seed": "7"})
    infinite = next(row for row in sql if row[1] == "nan")
    assert infinite[9] == {"acc": "nan", "latency": 1.7976931348623157e308}  # as MLflow stores inf


def test_sql_get_runs_reads_deleted_runs_too(client, store_runs, monkeypatch) -> None:
    monkeypatch.setattr(facts, "CHUNK", 2)
    wanted = [store_runs["deleted"], store_runs["plain"], store_runs["many-3"], "0" * 32]
    sql = SqlFacts(client._tracking_client.store).get_runs(wanted, KEYS)
    searched = SearchFacts(client).get_runs(wanted, KEYS)
    assert sorted(sql) == sorted(searched) == sorted(wanted[:3])
    assert {run_id: view(run) for run_id, run in sql.items()} == {
        run_id: view(run) for run_id, run in searched.items()
    }
    assert sql[store_runs["deleted"]].info.lifecycle_stage == "deleted"
    assert sql[store_runs["deleted"]].data.metrics == {"acc": 0.1, "latency": -3e-7}


def test_a_store_picks_its_reader(client) -> None:
    assert isinstance(reader_for(client, KEYS), SqlFacts)
    assert isinstance(reader_for(client, FactKeys(lean=False)), SearchFacts)


SPEC = """
version: 1
cycle: 2026-Q4
objectives:
  - id: quality
    title: Quality
    category: product
    key_results:
      - id: acc
        metric: acc
        experiments: ["facts-*"]
        filter: "attributes.run_name LIKE 'many-%'"
        baseline: 0.0
        target: 1.0
      - id: mean-acc
        metric: acc
        aggregate: mean
        baseline: 0.0
        target: 1.0
        guardrails:
          - {metric: latency, max: 50}
      - id: runs
        metric: acc
        aggregate: count
        baseline: 0
        target: 10
"""


def test_both_readers_count_the_same(client, store_runs, runner, write_spec, monkeypatch) -> None:
    assert invoke(runner, "apply", str(write_spec(SPEC))).exit_code == 0
    spec = state.load_published(client).spec
    lean, _ = compute_key_results(client, spec)
    monkeypatch.setattr(compute, "reader_for", lambda client, keys: SearchFacts(client))
    searched, _ = compute_key_results(client, spec)
    assert tally_texts(lean) == tally_texts(searched)
    tallies = {kr_id: computation.tally for kr_id, computation in lean.items()}
    counts = {kr_id: (t.count, t.pending, t.excluded) for kr_id, t in tallies.items()}
    # acc: the seven "many-" runs; mean-acc: plain counted, the running "many-", "early" and
    # "late" runs (all inside 2026-Q4) wait for latency, the FAILED one is out; runs: every run
    # with acc but the FAILED and the deleted one.
    assert counts == {"acc": (7, 0, 0), "mean-acc": (1, 9, 1), "runs": (10, 0, 1)}
    assert tallies["mean-acc"].current()[0] == 0.9733333333333334


# ---------------------------------------------------------------------------------------------
# Tag writes: all settled runs in one transaction inside a SQL store


def tag_changes_case(
    client: MlflowClient, experiment: str
) -> tuple[dict[str, facts.TagChanges], dict[str, str]]:
    """Changes over runs that have some of the tags already, and the run ids by role."""
    experiment_id = client.create_experiment(experiment)
    runs = {name: client.create_run(experiment_id, run_name=name).info.run_id for name in ("a", "b", "gone")}
    client.set_tag(runs["a"], "okr.kr.acc", "pending")
    client.set_tag(runs["a"], "okr.krs", "old")
    client.set_tag(runs["a"], "user", "kept")
    client.set_tag(runs["gone"], "okr.kr.acc", "pending")
    client.delete_run(runs["gone"])
    changes = {
        runs["a"]: facts.TagChanges({"okr.kr.acc": "counted", "okr.cycle": "q4"}, ["okr.krs", "okr.kr.none"]),
        runs["b"]: facts.TagChanges({"okr.kr.acc": "excluded: run FAILED", "okr.kr.acc.value": "0.5"}, []),
        runs["gone"]: facts.TagChanges({"okr.kr.acc": "counted"}, []),
    }
    return changes, runs


def okr_tags(client: MlflowClient, run_id: str) -> dict[str, str]:
    return {k: v for k, v in client.get_run(run_id).data.tags.items() if k.startswith(("okr.", "user"))}


def test_sql_tag_writes_update_insert_and_delete_in_one_go(client) -> None:
    changes, runs = tag_changes_case(client, "tag-writes-sql")
    SqlFacts(client._tracking_client.store).write_tags(changes)
    assert okr_tags(client, runs["a"]) == {"okr.kr.acc": "counted", "okr.cycle": "q4", "user": "kept"}
    assert okr_tags(client, runs["b"]) == {"okr.kr.acc": "excluded: run FAILED", "okr.kr.acc.value": "0.5"}
    assert okr_tags(client, runs["gone"]) == {"okr.kr.acc": "pending"}  # a deleted run is never tagged
    # The same changes through the client (REST stores) give the same tags.
    other, other_runs = tag_changes_case(client, "tag-writes-client")
    del other[other_runs["gone"]]  # MLflow refuses tags on a deleted run; the writer never sends one
    other[other_runs["a"]].remove.remove("okr.kr.none")  # the writer only removes tags a run has
    SearchFacts(client).write_tags(other)
    for name in ("a", "b"):
        assert okr_tags(client, other_runs[name]) == okr_tags(client, runs[name])


def test_a_tag_another_writer_inserts_meanwhile_is_updated(sql_server_uri) -> None:
    from sqlalchemy import event

    client = MlflowClient(sql_server_uri)
    store = client._tracking_client.store
    run_id = client.create_run(client.create_experiment("race")).info.run_id
    raced = []

    def insert_first(conn, cursor, statement, parameters, *args) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO TAGS") and not raced:
            raced.append(statement)
            client.set_tag(run_id, "okr.kr.acc", "pending")  # another connection, committed first

    event.listen(store.engine, "before_cursor_execute", insert_first)
    try:
        SqlFacts(store).write_tags({run_id: facts.TagChanges({"okr.kr.acc": "counted"}, [])})
    finally:
        event.remove(store.engine, "before_cursor_execute", insert_first)
    assert raced
    assert client.get_run(run_id).data.tags["okr.kr.acc"] == "counted"
