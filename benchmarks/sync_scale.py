"""How `mlflow-okr sync` scales: its time as a ratio to one plain paginated search_runs pass.

    python benchmarks/sync_scale.py [--runs 10000] [--experiments 5]

Creates N runs across several experiments in a temporary SQLite store (inserted in bulk into
MLflow's own schema, which is far faster than one create_run per run), publishes a spec with five
KRs (a filter, a guardrail, several aggregates, a maintain KR), then times:

- one plain pass: MlflowClient.search_runs over the same experiments, max_results=1000, following
  page tokens, touching every run (the least any recompute from the runs must do);
- the first sync, which tags every source run (okr.cycle, okr.krs, okr.kr.<id>);
- a steady-state sync (nothing drifted) and `sync --check`;

each as a ratio to the plain pass, and the peak Python memory (tracemalloc) of a steady-state sync
at N and at N/4 runs: the scan keeps one page in memory, so the peak should not grow with N.
Timings on a shared machine are noisy: each figure is the best of --repeat tries.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import random
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CYCLE = "2026-Q4"
NOW = dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc)
CYCLE_START_MS = int(dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
NOW_MS = int(NOW.timestamp() * 1000)
DAY_MS = 86_400_000
INSERT_CHUNK = 2000

SPEC = """\
version: 1
cycle: 2026-Q4
objectives:
  - id: model-quality
    title: Ship models that are accurate and fast
    category: product
    key_results:
      - id: accuracy
        metric: accuracy
        experiments: ["bench-*"]
        filter: "tags.stage = 'candidate'"
        baseline: 0.80
        target: 0.97
        guardrails:
          - {metric: latency_ms, max: 50}
      - id: mean-loss
        metric: loss
        baseline: 0.5
        target: 0.2
        aggregate: mean
      - id: latest-latency
        metric: latency_ms
        experiments: ["bench-0", "bench-1"]
        baseline: 100
        target: 20
        aggregate: latest
  - id: reliability
    title: Keep quality up while we move fast
    category: operational
    key_results:
      - id: auc-floor
        metric: auc
        maintain: {min: 0.55}
      - id: candidate-runs
        metric: accuracy
        filter: "tags.stage = 'candidate'"
        aggregate: count
        baseline: 0
        target: 100000
"""


def create_runs(tracking_uri: str, runs: int, experiments: int, seed: int = 0) -> list[str]:
    """Create `runs` runs spread over `experiments` experiments; return the experiment ids."""
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)  # creates MLflow's schema
    experiment_ids = [client.create_experiment(f"bench-{index}") for index in range(experiments)]
    rng = random.Random(seed)
    engine = sqlalchemy.create_engine(tracking_uri)
    tables = {"runs": SqlRun, "metrics": SqlMetric, "latest_metrics": SqlLatestMetric, "tags": SqlTag,
              "params": SqlParam}
    pending: dict[str, list[dict[str, Any]]] = {name: [] for name in tables}

    def flush() -> None:
        with engine.begin() as connection:
            for name, batch in pending.items():
                if batch:
                    connection.execute(tables[name].__table__.insert(), batch)
                    batch.clear()

    for index in range(runs):
        for name, rows in run_rows(rng, index, int(experiment_ids[index % experiments])).items():
            pending[name].extend(rows)
        if len(pending["runs"]) >= INSERT_CHUNK:
            flush()
    flush()
    engine.dispose()
    return experiment_ids


def run_rows(rng: random.Random, index: int, experiment_id: int) -> dict[str, list[dict[str, Any]]]:
    """The database rows of one run: 5% start before the cycle, 3% failed, 2% still running."""
    run_id = uuid.uuid4().hex
    if rng.random() < 0.05:
        start = CYCLE_START_MS - rng.randint(1, 30) * DAY_MS
    else:
        start = rng.randint(CYCLE_START_MS, NOW_MS - 3_600_000)
    status = rng.choices(["FINISHED", "FAILED", "RUNNING"], weights=[95, 3, 2])[0]
    run = {
        "run_uuid": run_id, "name": f"run-{index}", "source_type": "LOCAL", "source_name": "bench",
        "entry_point_name": "", "user_id": "bench", "status": status, "start_time": start,
        "end_time": None if status == "RUNNING" else start + 60_000, "source_version": "",
        "lifecycle_stage": "active", "artifact_uri": f"/tmp/artifacts/{run_id}",
        "experiment_id": experiment_id, "deleted_time": None,
    }
    values = {
        "accuracy": rng.uniform(0.70, 0.96), "loss": rng.uniform(0.2, 0.6), "auc": rng.uniform(0.6, 0.99)
    }
    if rng.random() < 0.95:  # the guardrail metric is sometimes missing: pending or excluded
        values["latency_ms"] = rng.uniform(5, 80)
    metrics = [
        {"key": key, "value": value, "timestamp": start + 30_000, "step": 0, "is_nan": False,
         "run_uuid": run_id}
        for key, value in values.items()
    ]
    tags = {"stage": "candidate" if rng.random() < 0.7 else "experiment", "mlflow.runName": f"run-{index}",
            "mlflow.user": "bench"}
    params = {"lr": str(rng.choice([0.1, 0.01, 0.001])), "depth": str(rng.randint(2, 8))}
    return {
        "runs": [run],
        "metrics": metrics,
        "latest_metrics": metrics,
        "tags": [{"key": key, "value": value, "run_uuid": run_id} for key, value in tags.items()],
        "params": [{"key": key, "value": value, "run_uuid": run_id} for key, value in params.items()],
    }


def plain_pass(tracking_uri: str, experiment_ids: list[str]) -> int:
    """One paginated search_runs pass touching every run: the baseline a sync is compared with."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    seen, token = 0, None
    while True:
        page = client.search_runs(experiment_ids, max_results=1000, page_token=token)
        for run in page:
            seen += len(run.data.metrics) > 0
        token = page.token
        if not token:
            return seen


def plain_tag_writes(tracking_uri: str, experiment_ids: list[str], runs: int) -> float:
    """Seconds per run for plain MLflow to write 4 tags on a run in one log_batch (first `runs` runs)."""
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run_ids = [run.info.run_id for run in client.search_runs(experiment_ids, max_results=runs)]
    tags = [RunTag(f"bench.tag.{index}", "counted") for index in range(4)]
    started = time.perf_counter()
    for run_id in run_ids:
        client.log_batch(run_id, tags=tags, synchronous=True)
    return (time.perf_counter() - started) / len(run_ids)


def best_of(repeat: int, work: Callable[[], Any]) -> tuple[float, Any]:
    """The shortest wall time of `repeat` calls, and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def peak_memory(work: Callable[[], Any]) -> int:
    """Peak bytes allocated by Python during `work` (tracemalloc)."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def prepare(
    directory: Path, runs: int, experiments: int, tracking_uri: str | None = None, tag_runs: bool = False,
    specs: Sequence[str] = (SPEC,),
) -> tuple[str, list[str], float]:
    """A store with `runs` runs and `specs` applied (not yet synced); return uri, ids, build time.

    The store is `directory/mlflow.db` on SQLite unless `tracking_uri` names another database
    (an empty one, or one with MLflow's schema and no experiments yet). With `tag_runs`, the
    okr.* tags the first sync would write are inserted in bulk (`tag_in_bulk`).
    """
    import mlflow_okr

    tracking_uri = tracking_uri or f"sqlite:///{directory / 'mlflow.db'}"
    started = time.perf_counter()
    experiment_ids = create_runs(tracking_uri, runs, experiments)
    for text in specs:
        spec = mlflow_okr.parse_spec(text, "benchmark okrs.yaml")
        mlflow_okr.apply_spec(spec, tracking_uri=tracking_uri, sync_after=False)
    if tag_runs:
        tag_in_bulk(tracking_uri)
    built = time.perf_counter() - started
    return tracking_uri, experiment_ids, built


def tag_in_bulk(tracking_uri: str) -> int:
    """Insert the okr.* source-run tags the first sync would write, in bulk; return how many.

    The first sync writes them with one MLflow `log_batch` per run (27x a plain pass at 10,000
    runs, most of an hour at 100,000): a one-time cost that the steady-state figures do not
    measure. The tags come from the same plan as sync's (`scope.plan_run_tags`), one published
    set after the other, so a sync afterwards finds no run tag to repair. A run that several sets
    count (a team's quarter and the company's year) lists all their KRs in okr.krs, as sync
    leaves it; its okr.cycle, the innermost cycle containing its start, is the same in every plan.
    """
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.models import SqlTag
    from mlflow.tracking import MlflowClient

    from mlflow_okr import state, vocabulary
    from mlflow_okr.compute import compute_key_results
    from mlflow_okr.scope import plan_run_tags

    client = MlflowClient(tracking_uri)
    tags_by_run: dict[str, dict[str, str]] = {}

    def collect(spec: Any, run: Any, verdicts: dict) -> None:
        plan = plan_run_tags(spec, run, verdicts)
        if not plan.changed:
            return
        tags = tags_by_run.setdefault(run.info.run_id, {})
        listed = {kr for text in (tags.get(vocabulary.TAG_KRS), plan.changed.get(vocabulary.TAG_KRS))
                  if text for kr in text.split(",")}
        tags.update(plan.changed)
        if listed:
            tags[vocabulary.TAG_KRS] = ",".join(sorted(listed))

    for published in state.published_sets(client):
        compute_key_results(client, published.spec, on_run=functools.partial(collect, published.spec))
    rows = [{"key": k, "value": v, "run_uuid": run_id} for run_id, tags in tags_by_run.items()
            for k, v in tags.items()]
    engine = sqlalchemy.create_engine(tracking_uri)
    with engine.begin() as connection:
        for start in range(0, len(rows), INSERT_CHUNK):
            connection.execute(SqlTag.__table__.insert(), rows[start:start + INSERT_CHUNK])
    engine.dispose()
    return len(rows)


def main() -> None:
    import mlflow_okr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="Runs to create (default 10000).")
    parser.add_argument("--experiments", type=int, default=5, help="Experiments to spread them over.")
    parser.add_argument("--repeat", type=int, default=3, help="Tries per timing; the best is kept.")
    parser.add_argument(
        "--first-sync", action="store_true",
        help="Time the first sync, which tags every run one log_batch at a time (slow at 100,000 "
        "runs); by default the tags it would write are inserted in bulk first.",
    )
    args = parser.parse_args()

    def sync(uri: str, check: bool = False) -> Any:
        return mlflow_okr.sync(tracking_uri=uri, cycle=CYCLE, check=check, now=NOW)

    with tempfile.TemporaryDirectory(prefix="okr-sync-scale-") as tmp:
        full, quarter = Path(tmp, "full"), Path(tmp, "quarter")
        full.mkdir()
        quarter.mkdir()
        uri, experiment_ids, built = prepare(full, args.runs, args.experiments, tag_runs=not args.first_sync)
        print(f"{args.runs:,} runs in {args.experiments} experiments created in {built:.1f} s (bulk insert"
              + (")" if args.first_sync else ", okr.* tags included)"))

        plain, seen = best_of(args.repeat, lambda: plain_pass(uri, experiment_ids))
        first_started = time.perf_counter()
        first = sync(uri)
        first_time = time.perf_counter() - first_started
        steady, steady_result = best_of(args.repeat, lambda: sync(uri))
        check, check_result = best_of(args.repeat, lambda: sync(uri, check=True))
        assert seen == args.runs, f"plain pass saw {seen} runs"
        assert not check_result.drifted, "steady state should have no drift"
        assert steady_result.run_drift_count == 0

        print(f"plain search_runs pass        {plain:8.2f} s   1.00x   ({seen:,} runs)")
        what = "tags every run" if args.first_sync else "KR state only"
        print(f"first sync ({what:15}) {first_time:8.2f} s  {first_time / plain:5.2f}x   "
              f"({first.runs_scanned:,} runs scanned, {first.run_drift_count:,} run tags written)")
        print(f"steady-state sync             {steady:8.2f} s  {steady / plain:5.2f}x   (target <= 0.5)")
        print(f"sync --check                  {check:8.2f} s  {check / plain:5.2f}x")

        per_write = plain_tag_writes(uri, experiment_ids, min(500, args.runs))
        print(f"  for scale: one plain MLflow log_batch per run costs {per_write * 1000:.1f} ms, so "
              f"tagging {first.runs_scanned:,} runs that way would take about "
              f"{per_write * first.runs_scanned:.0f} s; sync writes the tags of 1,000 runs per transaction")

        small_runs = max(1, args.runs // 4)
        small_uri, _, _ = prepare(quarter, small_runs, args.experiments, tag_runs=True)
        sync(small_uri)
        peak_full = peak_memory(lambda: sync(uri))
        peak_small = peak_memory(lambda: sync(small_uri))
        print(f"peak Python memory, steady-state sync: {peak_full / 2**20:.1f} MiB at {args.runs:,} runs, "
              f"{peak_small / 2**20:.1f} MiB at {small_runs:,} runs (ratio {peak_full / peak_small:.2f})")
        status = first.status
        print(f"cycle score {status.score:.2f}; " + ", ".join(
            f"{kr.id}={kr.current if kr.current is not None else '-'} ({kr.counted_runs} runs)"
            for kr in status.key_results()
        ))


if __name__ == "__main__":
    main()
