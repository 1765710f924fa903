"""Sustained load: writes/s held through an `okr+` server as a ratio to plain MLflow on the same server.

For each backend (plain, then okr+), starts a 2-worker `mlflow server`, runs PROCESSES x THREADS
clients writing mixed metrics, tags and batches to shared KRs for SECONDS each, and counts the
writes that returned. The clients start over several seconds (32 forked clients on 2 cores), so
the rate compared is the one held while all of them were writing: the writes that returned
between the last client's start and the first client's end, over that span. The rate over each
client's whole window is printed too. The two rounds run back to back with the same seed,
database kind and settings; with `--pairs N` they alternate N times and the median of the N
ratios is reported (a 2-core machine running 32 clients, 2 workers and the database is noisy).

    python benchmarks/load.py [--seconds 20] [--pairs 1] [--processes 8] [--threads 4] [--postgres]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' server and writer helpers

from tests import test_stress  # noqa: E402
from tests.postgres import PostgresServer, find_postgres_bin  # noqa: E402
from tests.servers import mlflow_server  # noqa: E402


def all_clients_rate(journal_dir: Path) -> tuple[float, float]:
    """Writes/s while every client was writing, and the seconds that lasted."""
    starts, ends, moments = [], [], []
    for path in journal_dir.glob("*.jsonl"):
        mine = []
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            if entry[0] == "run":
                starts.append(entry[-1])
            elif entry[0] in ("metric", "tag"):
                mine.append(entry[-1])
        if mine:
            ends.append(max(mine))
            moments += mine
    first, last = max(starts), min(ends)
    if last <= first:
        return 0.0, 0.0
    return sum(first <= moment <= last for moment in moments) / (last - first), last - first


def one_round(
    backend_uri: str, plain_uri: str, workdir: Path, seconds: float
) -> tuple[test_stress.Journal, Path]:
    """Publish the stress spec, serve `backend_uri` with 2 workers, run the writers; the journal."""
    workdir.mkdir(parents=True)
    experiment_id = test_stress.publish(plain_uri, workdir)
    journal_dir = workdir / "journal"
    journal_dir.mkdir()
    server_env = test_stress.server_env()
    with mlflow_server(backend_uri, workdir / "server", workers=2, extra_env=server_env) as server:
        processes = test_stress.run_writers(server.url, experiment_id, seconds, journal_dir)
        for process in processes:
            process.join()
    return test_stress.Journal.read(journal_dir), journal_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="writing time per round")
    parser.add_argument("--pairs", type=int, default=1, help="plain / okr+ pairs of rounds")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args()
    test_stress.PROCESSES, test_stress.THREADS = args.processes, args.threads
    multiprocessing.set_start_method("fork")

    with tempfile.TemporaryDirectory(prefix="mlflow-okr-load-") as tmp:
        root = Path(tmp)
        postgres = None
        if args.postgres:
            bin_dir = find_postgres_bin()
            if bin_dir is None:
                sys.exit("PostgreSQL binaries not found; apt-get install -y postgresql")
            postgres = PostgresServer(bin_dir)
            postgres.init()
            postgres.start()
            postgres.create_template()
        ratios = []
        try:
            for pair in range(args.pairs):
                results = {}
                for label, prefix in (("plain", ""), ("okr+", "okr+")):
                    sqlite_uri = f"sqlite:///{root / str(pair) / label / 'mlflow.db'}"
                    plain_uri = postgres.create_database() if postgres else sqlite_uri
                    journal, journal_dir = one_round(
                        prefix + plain_uri, plain_uri, root / str(pair) / label, args.seconds
                    )
                    results[label], span = all_clients_rate(journal_dir)
                    print(
                        f"{label:>6}: {results[label]:.1f} writes/s held over the {span:.1f} s all "
                        f"{args.processes}x{args.threads} clients wrote; {journal.writes} writes in "
                        f"{args.seconds:g} s per client = {journal.writes / args.seconds:.1f} writes/s; "
                        f"{len(journal.errors)} errors (2 workers, {'PostgreSQL' if postgres else 'SQLite'})"
                    )
                    for error in journal.errors[:3]:
                        print(f"        error: {error[1]}: {error[2]}")
                ratios.append(results["okr+"] / results["plain"])
                print(f"  pair {pair + 1}: {ratios[-1]:.2f}x")
        finally:
            if postgres:
                postgres.remove()
    print(
        f"sustained writes/s through okr+ as a ratio to plain MLflow: {statistics.median(ratios):.2f}x "
        f"(median of {len(ratios)}: {', '.join(f'{ratio:.2f}' for ratio in ratios)})"
    )


if __name__ == "__main__":
    main()
