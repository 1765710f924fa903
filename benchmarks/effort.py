"""How long `status --effort` takes at scale, against one plain paginated search_runs pass.

    python benchmarks/effort.py [--runs 100000] [--experiments 5] [--postgres]

Builds the store of `sync_scale.py` (runs inserted in bulk into MLflow's schema, with the okr.*
tags the first sync would write), applies its spec and syncs once, then times:

- one plain pass: MlflowClient.search_runs over the experiments, following page tokens;
- `effort_status`: the stored status plus the effort of every KR, objective and owner and the
  unaligned runs (inside SQLite: one aggregate and one lean query per metric KR);
- the effort reads and the improving runs alone (`effort.read_effort_facts`, `effort.improving_by_kr`).

With --postgres the store is a database on a temporary PostgreSQL server (tests/postgres.py).
Timings on a shared machine are noisy: each figure is the best of --repeat tries.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts: sync_scale, freshness
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.postgres, for --postgres

from freshness import databases  # noqa: E402
from sync_scale import CYCLE, NOW, best_of, plain_pass, prepare  # noqa: E402

TARGET_SECONDS = 2.0


def main() -> None:
    import mlflow_okr
    from mlflow_okr import effort, practice, state
    from mlflow_okr.spec import parse_cycle

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000, help="Runs to create (default 100000).")
    parser.add_argument("--experiments", type=int, default=5, help="Experiments to spread them over.")
    parser.add_argument("--repeat", type=int, default=3, help="Tries per timing; the best is kept.")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="okr-effort-") as tmp, databases(args.postgres) as database:
        uri, experiment_ids, built = prepare(
            Path(tmp), args.runs, args.experiments, tracking_uri=database(), tag_runs=True
        )
        mlflow_okr.sync(tracking_uri=uri, cycle=CYCLE, now=NOW)
        backend = "PostgreSQL" if args.postgres else "SQLite"
        print(f"{args.runs:,} runs in {args.experiments} experiments on {backend}, built in {built:.1f} s, "
              "synced")

        plain, seen = best_of(1, lambda: plain_pass(uri, experiment_ids))
        total, status = best_of(
            args.repeat, lambda: practice.effort_status(tracking_uri=uri, cycle=CYCLE, now=NOW)
        )
        client = state.make_client(uri)
        cycle = parse_cycle(CYCLE)
        metric_krs = effort.metric_krs_of(status, state.current_sets(client, CYCLE))

        def effort_reads() -> dict:
            facts = effort.read_effort_facts(client, cycle, NOW, metric_krs)
            return effort.improving_by_kr(client, cycle, facts, metric_krs)

        reads, _ = best_of(args.repeat, effort_reads)
        print(f"plain search_runs pass        {plain:8.2f} s   1.00x   ({seen:,} runs)")
        print(f"status --effort               {total:8.2f} s  {total / plain:5.3f}x   "
              f"(target <= {TARGET_SECONDS:g} s: {'met' if total <= TARGET_SECONDS else 'NOT met'})")
        print(f"  of which the effort reads   {reads:8.2f} s  {reads / plain:5.3f}x   "
              f"(one aggregate + {len(metric_krs)} lean KR queries, improving runs decided)")
        print(f"cycle: {status.effort.runs:,} runs, {status.effort.run_hours:,.0f} run-hours; unaligned "
              f"{status.unaligned.runs:,} ({status.unaligned.runs_share:.1%}); "
              + ", ".join(f"{kr.id}: {kr.effort.runs:,} runs, {kr.effort.improving_runs} improving"
                          for kr in status.key_results()))


if __name__ == "__main__":
    main()
