"""How an organization's OKRs scale on one MLflow: ten team sets and a company set over N runs.

    python benchmarks/organization.py [--runs 1000 100000 ...] [--postgres] [--repeat 3]

For each N, builds a store as `sync_scale.py` does (N runs inserted in bulk into MLflow's own
schema, here over 20 experiments bench-0 .. bench-19, with the okr.* run tags the first sync would
write) and publishes, as an organization would:

- a company set (`team: company`, the annual cycle 2026): two objectives, one KR each over every
  bench experiment;
- ten team sets (`team: team-0` .. `team-9`, the quarter 2026-Q4): one objective each, aligned to a
  company objective (`aligns_to: ["2026:company/..."]`), with the five KRs of `sync_scale.py`'s
  spec (a filter, a guardrail, mean, latest, count and a maintain KR) over the team's two
  experiments: 52 KRs in 11 sets of 2 nested cycles.

It syncs once (KR state only) and then times, statuses as of 2026-11-15 (inside both cycles):

- one plain paginated `search_runs` pass over the 20 experiments (`sync_scale.plain_pass`), a
  steady-state `sync` of every current set and `sync --check`, each as a ratio to that pass;
- `status`: `mlflow_okr.status` in this process, and `mlflow-okr status --format json` as a new
  process (its figure includes the interpreter's start and MLflow's import);
- the board's `/api/status` over HTTP, served by `mlflow-okr board` in its own process (the first
  request, then the median of the next ones);
- `report --format json` (`build_report` and `render`, what the command runs);
- `apply` of one team set with a changed target, which publishes it and syncs that set (the CLI's
  `apply`);
- first-write freshness (a fresh okr+ process logs a new best accuracy in bench-0; the time until
  team-0's accuracy KR shows it) and `set_terminated` / `log_metric` through okr+ vs plain,
  interleaved, medians: `freshness.py`'s measuring processes, on this store;
- the peak Python memory (tracemalloc) of a steady-state sync and of `status`, at N and on a
  second store of N/4 runs.

Then it prints every target of issue 18 as met or missed for each N: status and /api/status
<= 1 s, first write fresh within 1 s (worst sample), run end <= 1.1x and log_metric <= 1.02x plain
(medians), steady-state sync <= 0.1x one plain pass, memory flat in N (the peak at N at most
1.25x the peak at N/4). Reads are the median of --repeat tries; the scans (plain pass, syncs) the
best of --scan-repeat, and apply (which syncs its set) their median (default 1: a plain pass over
100,000 runs takes minutes). The reads come first and every figure is printed when measured, so a
size cut short still shows them; `sync --check` follows the live writes, so it also says whether
they left the state a recompute would. With --postgres every store is a database on a temporary
PostgreSQL server (`freshness.databases`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts: sync_scale, freshness
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.servers, tests.postgres

import freshness  # noqa: E402
from sync_scale import NOW, best_of, peak_memory, plain_pass, prepare  # noqa: E402

EXPERIMENTS = 20
TEAMS = 10
WATCHED_TEAM = 0  # its accuracy KR is the one first-write freshness watches (experiment bench-0)
APPLIED_TEAM = TEAMS - 1  # the set re-applied with a changed target
AS_OF = NOW.strftime("%Y-%m-%d")
STATUS_TARGET = 1.0  # seconds, status and /api/status
FRESHNESS_TARGET = freshness.FIRST_WRITE_TARGET
RUN_END_TARGET = freshness.RUN_END_TARGET
LOG_METRIC_TARGET = freshness.LOG_METRIC_TARGET
SYNC_TARGET = 0.1  # steady-state sync / one plain paginated search_runs pass
MEMORY_FLAT = 1.25  # peak at N / peak at N/4: "flat", with room for allocator noise
BOARD_STARTUP = 90.0  # seconds the board process gets to answer

COMPANY_SPEC = """\
version: 1
team: company
cycle: "2026"
objectives:
  - id: model-quality
    title: Our models lead on accuracy
    category: product
    key_results:
      - id: company-accuracy
        metric: accuracy
        experiments: ["bench-*"]
        filter: "tags.stage = 'candidate'"
        baseline: 0.80
        target: 0.97
  - id: reliability
    title: Quality holds while we move fast
    category: operational
    key_results:
      - id: company-auc-floor
        metric: auc
        experiments: ["bench-*"]
        maintain: {min: 0.55}
"""

TEAM_SPEC = """\
version: 1
team: {team}
cycle: 2026-Q4
objectives:
  - id: {team}-models
    title: {team} ships models that are accurate and fast
    category: product
    aligns_to: ["2026:company/{parent}"]
    key_results:
      - id: {team}-accuracy
        metric: accuracy
        experiments: {experiments}
        filter: "tags.stage = 'candidate'"
        baseline: 0.80
        target: {accuracy_target}
        guardrails:
          - {{metric: latency_ms, max: 50}}
      - id: {team}-mean-loss
        metric: loss
        experiments: {experiments}
        baseline: 0.5
        target: 0.2
        aggregate: mean
      - id: {team}-latest-latency
        metric: latency_ms
        experiments: ["{first}"]
        baseline: 100
        target: 20
        aggregate: latest
      - id: {team}-auc-floor
        metric: auc
        experiments: {experiments}
        maintain: {{min: 0.55}}
      - id: {team}-candidate-runs
        metric: accuracy
        experiments: {experiments}
        filter: "tags.stage = 'candidate'"
        aggregate: count
        baseline: 0
        target: 10000
"""


def team_spec(index: int, accuracy_target: float = 0.97) -> str:
    """Team `index`'s set: its objective serves a company objective, its KRs read its two experiments."""
    first, second = f"bench-{2 * index}", f"bench-{2 * index + 1}"
    return TEAM_SPEC.format(
        team=f"team-{index}", parent=("model-quality", "reliability")[index % 2], first=first,
        experiments=json.dumps([first, second]), accuracy_target=accuracy_target,
    )


def organization_specs() -> list[str]:
    """The company set first: the teams' aligns_to are resolved when they are applied."""
    return [COMPANY_SPEC] + [team_spec(index) for index in range(TEAMS)]


def median_of(repeat: int, work: Callable[[], Any]) -> tuple[float, float, Any]:
    """The median and the first of `repeat` wall times of `work()`, and the last call's result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times[0], result


def sync(uri: str, check: bool = False) -> Any:
    """`mlflow-okr sync [--check]`: every set of every cycle current on 2026-11-15."""
    import mlflow_okr

    return mlflow_okr.sync(tracking_uri=uri, check=check, now=NOW)


def status(uri: str) -> Any:
    import mlflow_okr

    return mlflow_okr.status(tracking_uri=uri, now=NOW)


def cli(*arguments: str) -> str:
    """`mlflow-okr ARGUMENTS` in a new process; its standard output."""
    done = subprocess.run([sys.executable, "-m", "mlflow_okr", *arguments], capture_output=True, text=True)
    if done.returncode != 0:
        raise freshness.BenchmarkError(
            f"mlflow-okr {arguments[0]} exited with {done.returncode}: {done.stderr.strip()[-800:]}"
        )
    return done.stdout


def describe(found: dict[str, Any]) -> str:
    """`2026-Q4: 10 sets, 10 objectives; 2026: 1 set, 2 objectives` from a status object."""
    cycles = [found] + found.get("enclosing_cycles", [])
    return "; ".join(
        f"{cycle['cycle']['name']}: {plural(len(cycle['teams']), 'set')}, "
        f"{plural(len(cycle['objectives']), 'objective')}"
        for cycle in cycles
    )


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@contextlib.contextmanager
def board(uri: str, workdir: Path) -> Iterator[str]:
    """`mlflow-okr board` on a free port, reading `uri`; its URL once it answers."""
    import requests

    from tests.servers import free_port

    port = free_port()
    log_path = workdir / "board.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow_okr", "board", "--port", str(port), "--tracking-uri", uri],
            stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + BOARD_STARTUP
            while True:
                if process.poll() is not None:
                    raise freshness.BenchmarkError(f"the board exited: {log_path.read_text()[-800:]}")
                try:
                    requests.get(url + "/", timeout=5)
                    break
                except requests.ConnectionError:
                    if time.monotonic() > deadline:
                        message = f"the board did not answer in {BOARD_STARTUP:g} s"
                        raise freshness.BenchmarkError(message) from None
                    time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def api_status(url: str, repeat: int) -> dict[str, Any]:
    """The first GET /api/status, then the median of `repeat` more."""
    import requests

    def get() -> dict[str, Any]:
        response = requests.get(f"{url}/api/status?as_of={AS_OF}", timeout=120)
        if response.status_code != 200:
            message = f"/api/status answered {response.status_code}: {response.text[:800]}"
            raise freshness.BenchmarkError(message)
        return response.json()

    started = time.perf_counter()
    found = get()
    first = time.perf_counter() - started
    median, _, found = median_of(repeat, get)
    return {"first": first, "median": median, "shows": describe(found)}


def report_json(uri: str) -> str:
    """What `mlflow-okr report --format json --as-of 2026-11-15` writes."""
    from mlflow_okr import state
    from mlflow_okr.report import build_report, render

    return render(build_report(state.make_client(uri), now=NOW), "json")


def attempt(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`work()`, or {"error": why} when a library error or a failed measurement stopped it."""
    from mlflow_okr.errors import OkrError

    try:
        return work()
    except (freshness.BenchmarkError, OkrError) as error:
        print(f"  error: {type(error).__name__}: {error}", flush=True)
        return {"error": f"{type(error).__name__}: {error}"}


# -- one store size ----------------------------------------------------------------------------------


def show(label: str, found: dict[str, Any], detail: Callable[[dict[str, Any]], str]) -> None:
    """One figure's line, printed as soon as it is measured (a size can take long)."""
    if "error" in found:
        print(f"  {label:34} error: {found['error'][:300]}", flush=True)
    else:
        print(f"  {label:34} {found['median']:8.3f} s   {detail(found)}", flush=True)


def measure_size(
    runs: int, args: argparse.Namespace, database: Callable[[], str | None], workdir: Path
) -> dict[str, Any]:
    """Build the organization's store of `runs` runs, make it steady, and take every measurement.

    The reads come first and the scans last, so that a size cut short still gives the reads.
    """
    import sqlalchemy
    from mlflow.tracking import MlflowClient

    import mlflow_okr

    directory = workdir / f"runs-{runs}"
    directory.mkdir()
    print(f"\n{runs:,} runs, {args.backend}: building the store ...", flush=True)
    uri, experiment_ids, built = prepare(
        directory, runs, EXPERIMENTS, tracking_uri=database(), tag_runs=True, specs=organization_specs()
    )
    first_sync, first = best_of(1, lambda: sync(uri))
    print(f"  built in {built:.1f} s ({EXPERIMENTS} experiments by bulk insert, okr.* run tags included, "
          f"{len(organization_specs())} sets applied); first sync (KR state) {first_sync:.1f} s over "
          f"{len(first.sets)} sets, {first.run_drift_count} run tags repaired", flush=True)
    result: dict[str, Any] = {"runs": runs, "build_seconds": built, "first_sync_seconds": first_sync}
    repeats = f"median of {args.repeat}"

    def status_in_process() -> dict[str, Any]:
        median, first_call, found = median_of(args.repeat, lambda: status(uri))
        return {"median": median, "first": first_call, "shows": describe(json.loads(found.model_dump_json()))}

    result["status"] = attempt(status_in_process)
    show("status (mlflow_okr.status)", result["status"],
         lambda f: f"{repeats}, first call {f['first']:.3f} s; {f['shows']}")

    def status_command() -> dict[str, Any]:
        command = ("status", "--format", "json", "--as-of", AS_OF, "--tracking-uri", uri)
        median, _, output = median_of(args.repeat, lambda: cli(*command))
        return {"median": median, "shows": describe(json.loads(output))}

    result["status_cli"] = attempt(status_command)
    show("mlflow-okr status --format json", result["status_cli"], lambda f: f"{repeats}, a new process each")

    def board_status() -> dict[str, Any]:
        with board(uri, directory) as url:
            return api_status(url, args.repeat)

    result["api_status"] = attempt(board_status)
    show("board GET /api/status", result["api_status"],
         lambda f: f"{repeats} after a first request of {f['first']:.3f} s; {f['shows']}")

    def report() -> dict[str, Any]:
        median, first_call, document = median_of(args.repeat, lambda: report_json(uri))
        return {"median": median, "first": first_call, "bytes": len(document)}

    result["report"] = attempt(report)
    show("report --format json", result["report"],
         lambda f: f"{repeats}, first {f['first']:.3f} s, {f['bytes'] / 1024:.0f} KiB")

    reader = MlflowClient(uri)
    watched = f"team-{WATCHED_TEAM}-accuracy"
    target = {
        "uri": uri, "workdir": directory, "reader": reader, "kr_id": watched,
        "kr_run_id": freshness.kr_run_id(reader, f"okr/2026-Q4/team-{WATCHED_TEAM}", watched),
        "experiment_id": experiment_ids[2 * WATCHED_TEAM], "start_ms": freshness.run_start_ms(),
    }
    engine = sqlalchemy.create_engine(uri)
    best = freshness.best_accuracy(engine)
    engine.dispose()

    def first_writes() -> dict[str, Any]:
        nonlocal best
        samples: list[float] = []
        exits: list[float] = []
        for _ in range(args.repeat):
            best += freshness.FIRST_RISE
            samples += freshness.log_and_watch(target, [best], freshness.LOG_INTERVAL, args.timeout, exits)
        return {**freshness.spread(samples), "exits": freshness.spread(exits)}

    result["first_write"] = attempt(first_writes)
    show("first-write freshness", result["first_write"],
         lambda f: f"median, worst {f['max']:.3f} s of {len(f['samples'])} fresh okr+ processes")
    if "exits" in result["first_write"]:
        show("exit of that okr+ process", result["first_write"]["exits"],
             lambda f: f"median, worst {f['max']:.3f} s: told to exit once its write showed")

    def writes() -> dict[str, Any]:
        measured = freshness.compare_in_child(target, args.run_ends, args.calls, args.timeout)
        ratios = {"run_end": freshness.ratio_of(measured["run_end"])}
        for case, times in measured["log_metric"].items():
            ratios[f"log_metric {case}"] = freshness.ratio_of(times)
        return ratios

    result["writes"] = attempt(writes)
    for key, label in (("run_end", "set_terminated"), ("log_metric unused key", "log_metric, key no KR uses"),
                       ("log_metric accuracy", "log_metric, KR key (accuracy)")):
        if "error" in result["writes"]:
            print(f"  {label:34} error", flush=True)
            continue
        found = result["writes"][key]
        print(f"  {label:34} okr+ {found['okr_seconds'] * 1000:.2f} ms, "
              f"plain {found['plain_seconds'] * 1000:.2f} ms: {found['ratio']:.3f}x "
              f"(medians of {found['calls']}, interleaved)", flush=True)

    plain, seen = best_of(args.scan_repeat, lambda: plain_pass(uri, experiment_ids))
    print(f"  {'plain search_runs pass':34} {plain:8.2f} s   1.00x  ({seen:,} runs with metrics, "
          f"best of {args.scan_repeat})", flush=True)
    print(f"  {'first sync (KR state, tags in bulk)':34} {first_sync:8.2f} s  {first_sync / plain:5.2f}x",
          flush=True)

    targets = iter([0.98, 0.97] * args.scan_repeat)

    def apply() -> dict[str, Any]:
        def one() -> Any:
            spec = mlflow_okr.parse_spec(team_spec(APPLIED_TEAM, next(targets)), f"team-{APPLIED_TEAM}.yaml")
            return mlflow_okr.apply_spec(spec, tracking_uri=uri)

        median, first_call, _ = median_of(args.scan_repeat, one)
        return {"median": median, "first": first_call}

    result["apply"] = attempt(apply)
    show(f"apply team-{APPLIED_TEAM} (then its sync)", result["apply"],
         lambda f: f"median of {args.scan_repeat}, a changed target")

    # The check follows the live writes, so its drift also tells whether they left a recompute's state.
    check, checked = best_of(args.scan_repeat, lambda: sync(uri, check=True))
    print(f"  {'sync --check':34} {check:8.2f} s  {check / plain:5.2f}x  (drift after the live writes: "
          f"{len(checked.kr_drift)} KRs {[drift.kr for drift in checked.kr_drift][:5]}, "
          f"{checked.run_drift_count} run tags)", flush=True)
    for drift in checked.kr_drift:
        print(f"    {drift.kr} {drift.field}: stored {str(drift.stored)[:160]!r}, "
              f"computed {str(drift.computed)[:160]!r}", flush=True)
    for drift in checked.run_drift[:5]:
        print(f"    run {drift.run_id} {drift.tag}: stored {drift.stored!r}, computed {drift.computed!r}",
              flush=True)
    steady, synced = best_of(args.scan_repeat, lambda: sync(uri))
    print(f"  {'steady-state sync':34} {steady:8.2f} s  {steady / plain:5.2f}x  ({len(synced.sets)} sets, "
          f"{synced.runs_scanned:,} runs scanned over them; target <= {SYNC_TARGET:g}x)", flush=True)
    result["scans"] = {"plain_seconds": plain, "check_seconds": check, "sync_seconds": steady}

    quarter_runs = max(1, runs // 4)
    quarter = workdir / f"runs-{runs}-quarter"
    quarter.mkdir()
    quarter_uri, _, _ = prepare(
        quarter, quarter_runs, EXPERIMENTS, tracking_uri=database(), tag_runs=True, specs=organization_specs()
    )
    sync(quarter_uri)
    memory = {
        "quarter_runs": quarter_runs,
        "sync": peak_memory(lambda: sync(uri)),
        "sync_quarter": peak_memory(lambda: sync(quarter_uri)),
        "status": peak_memory(lambda: status(uri)),
        "status_quarter": peak_memory(lambda: status(quarter_uri)),
    }
    result["memory"] = memory
    for key, label in (("sync", "steady-state sync"), ("status", "status")):
        print(f"  peak Python memory, {label}: {memory[key] / 2**20:.1f} MiB at {runs:,} runs, "
              f"{memory[key + '_quarter'] / 2**20:.1f} MiB at {quarter_runs:,} "
              f"(ratio {memory[key] / memory[key + '_quarter']:.2f})", flush=True)
    return result


# -- targets -----------------------------------------------------------------------------------------


def judge(result: dict[str, Any], backend: str) -> list[tuple[str, str, bool | None]]:
    """Each target of issue 18 at this size: (target, figure, met)."""
    at = f"{result['runs']:,} runs, {backend}"
    verdicts: list[tuple[str, str, bool | None]] = []

    def seconds(target: str, found: dict[str, Any], key: str, limit: float) -> None:
        if "error" in found:
            verdicts.append((target, "error", False))
        else:
            verdicts.append((target, f"{found[key]:.3f} s", found[key] <= limit))

    seconds(f"status <= {STATUS_TARGET:g} s ({at})", result["status"], "median", STATUS_TARGET)
    seconds(f"/api/status <= {STATUS_TARGET:g} s ({at})", result["api_status"], "median", STATUS_TARGET)
    seconds(f"first-write freshness <= {FRESHNESS_TARGET:g} s, worst ({at})", result["first_write"], "max",
            FRESHNESS_TARGET)
    for key, target, limit in (
        ("run_end", f"run end <= {RUN_END_TARGET:g}x plain", RUN_END_TARGET),
        ("log_metric unused key", f"log_metric, key no KR uses <= {LOG_METRIC_TARGET:g}x plain",
         LOG_METRIC_TARGET),
        ("log_metric accuracy", f"log_metric, KR key <= {LOG_METRIC_TARGET:g}x plain", LOG_METRIC_TARGET),
    ):
        writes = result["writes"]
        if "error" in writes:
            verdicts.append((f"{target} ({at})", "error", False))
        else:
            ratio = writes[key]["ratio"]
            verdicts.append((f"{target} ({at})", f"{ratio:.3f}x", ratio <= limit))
    scans = result["scans"]
    ratio = scans["sync_seconds"] / scans["plain_seconds"]
    verdicts.append((f"steady-state sync <= {SYNC_TARGET:g}x a plain search_runs pass ({at})",
                     f"{ratio:.2f}x", ratio <= SYNC_TARGET))
    memory = result["memory"]
    worst = max(memory["sync"] / memory["sync_quarter"], memory["status"] / memory["status_quarter"])
    verdicts.append((f"memory flat in N: peak at N <= {MEMORY_FLAT:g}x at N/4 ({at})",
                     f"{worst:.2f}x (worst of sync, status)", worst <= MEMORY_FLAT))
    return verdicts


def print_verdicts(verdicts: list[tuple[str, str, bool | None]]) -> None:
    print()
    width = max(len(target) for target, _, _ in verdicts)
    figure_width = max(len(figure) for _, figure, _ in verdicts)
    for target, figure, met in verdicts:
        print(f"{target:{width}}  {figure:>{figure_width}}  {'met' if met else 'missed'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[1_000],
                        help="Store sizes to measure (default 1000; the issue's are 100000 and 1000000).")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite.")
    parser.add_argument("--repeat", type=int, default=3,
                        help="Tries of each read and apply (median kept), fresh processes for first-write "
                             "freshness (default 3).")
    parser.add_argument("--scan-repeat", type=int, default=1,
                        help="Tries of the plain pass and the syncs (best kept) and of apply (median; "
                             "default 1).")
    parser.add_argument("--run-ends", type=int, default=30, help="Runs ended per client (default 30).")
    parser.add_argument("--calls", type=int, default=300,
                        help="log_metric calls per client and key (default 300).")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="Seconds to wait for a logged value to show, or a measuring process to report.")
    args = parser.parse_args()
    if min(args.repeat, args.scan_repeat, args.run_ends, args.calls) < 1:
        parser.error("--repeat, --scan-repeat, --run-ends and --calls must be at least 1")
    # A plain `kill` must still stop the measuring processes, the board and the PostgreSQL server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args.backend = "PostgreSQL" if args.postgres else "SQLite"

    verdicts = []
    with tempfile.TemporaryDirectory(prefix="okr-organization-") as tmp, \
            freshness.databases(args.postgres) as database:
        for runs in sorted(set(args.runs)):
            verdicts += judge(measure_size(runs, args, database, Path(tmp)), args.backend)
    print_verdicts(verdicts)


if __name__ == "__main__":
    main()
