"""Sustained load: writes/s held through an `okr+` server as a ratio to plain MLflow on the same server.

For each backend (plain, then okr+), starts a 2-worker `mlflow server`, runs PROCESSES x THREADS
clients writing mixed metrics, tags and batches to shared KRs for SECONDS, and counts the writes
that returned. The two rounds run back to back with the same seed, database kind and settings.

    python benchmarks/load.py [--seconds 20] [--processes 8] [--threads 4] [--postgres]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' server and writer helpers

from tests import test_stress  # noqa: E402
from tests.postgres import PostgresServer, find_postgres_bin  # noqa: E402
from tests.servers import mlflow_server  # noqa: E402


def one_round(backend_uri: str, plain_uri: str, workdir: Path, seconds: float) -> test_stress.Journal:
    """Publish the stress spec, serve `backend_uri` with 2 workers, run the writers, read the journal."""
    workdir.mkdir(parents=True)
    experiment_id = test_stress.publish(plain_uri, workdir)
    journal_dir = workdir / "journal"
    journal_dir.mkdir()
    server_env = test_stress.server_env()
    with mlflow_server(backend_uri, workdir / "server", workers=2, extra_env=server_env) as server:
        processes = test_stress.run_writers(server.url, experiment_id, seconds, journal_dir)
        for process in processes:
            process.join()
    return test_stress.Journal.read(journal_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="writing time per round")
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
        try:
            results = {}
            for label, prefix in (("plain", ""), ("okr+", "okr+")):
                sqlite_uri = f"sqlite:///{root / label / 'mlflow.db'}"
                plain_uri = postgres.create_database() if postgres else sqlite_uri
                journal = one_round(prefix + plain_uri, plain_uri, root / label, args.seconds)
                # Every client writes for exactly `seconds` once its run exists, so this is the
                # aggregate rate the server held (start-up of the clients excluded).
                results[label] = journal.writes / args.seconds
                print(
                    f"{label:>6}: {journal.writes} writes in {args.seconds:g}s per client = "
                    f"{results[label]:.1f} writes/s held, {len(journal.errors)} errors "
                    f"({args.processes}x{args.threads} clients, 2 workers, "
                    f"{'PostgreSQL' if postgres else 'SQLite'})"
                )
                for error in journal.errors[:3]:
                    print(f"        error: {error[1]}: {error[2]}")
        finally:
            if postgres:
                postgres.remove()
    ratio = results["okr+"] / results["plain"]
    print(f"sustained writes/s through okr+ as a ratio to plain MLflow: {ratio:.2f}x")


if __name__ == "__main__":
    main()
