"""How long `mlflow-okr report --format html` takes next to `mlflow-okr sync` on the same big store.

    python benchmarks/report_scale.py [--runs 10000] [--experiments 5] [--repeat 3]

Builds the store of `sync_scale.py` (N runs inserted in bulk, five KRs with a filter, a guardrail,
several aggregates and a maintain KR), syncs it once (which tags every source run), then times:

- a steady-state `sync` (every KR recomputed from every run in the cycle, nothing to repair);
- the HTML report: stored status, best runs, guardrail breaches, KR history, charts, rendering;

and prints the report's time as a ratio to the sync's (the target is under 2x). The report reads
the stored KR state rather than rescanning the runs; only the guardrail-breach search touches
source runs, and only those the tag and metric filters select. Each figure is the best of --repeat.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sync_scale import NOW, best_of, prepare  # noqa: E402  (a sibling script, not a package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--experiments", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import mlflow_okr
    from mlflow_okr import state
    from mlflow_okr.report import build_report, render

    with tempfile.TemporaryDirectory() as directory:
        tracking_uri, _, built = prepare(Path(directory), args.runs, args.experiments)
        print(f"store: {args.runs:,} runs in {args.experiments} experiments, built in {built:.1f}s")
        started = time.perf_counter()
        first = mlflow_okr.sync(tracking_uri=tracking_uri, now=NOW)
        print(f"first sync (tags every source run): {time.perf_counter() - started:.2f}s, "
              f"{first.runs_scanned:,} runs scanned")

        sync_time, _ = best_of(args.repeat, lambda: mlflow_okr.sync(tracking_uri=tracking_uri, now=NOW))
        client = state.make_client(tracking_uri)

        def report_html() -> str:
            return render(build_report(client, now=NOW, ui_url="http://localhost:5000"), "html")

        report_time, document = best_of(args.repeat, report_html)
        report = build_report(client, now=NOW)
        breaches = sum(detail.guardrail_breach_count for detail in report.details.values())
        print(f"steady-state sync:      {sync_time:.2f}s")
        print(f"report --format html:   {report_time:.2f}s ({len(document) / 1024:.0f} KiB, "
              f"{len(report.details)} KRs, {breaches} guardrail breaches listed)")
        print(f"ratio report / sync:    {report_time / sync_time:.2f}x (target < 2x)")


if __name__ == "__main__":
    main()
