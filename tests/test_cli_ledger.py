"""`mlflow-okr ledger ...` commands: exit codes and the key lines of their output."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from mlflow_okr import vocabulary
from mlflow_okr.cli.ledger import ledger_group
from mlflow_okr.ledger.events import event_tag, seal_param
from tests.conftest import invoke, make_run


@pytest.fixture
def arms(client: MlflowClient) -> tuple[list[str], list[str]]:
    experiment = client.create_experiment("reco-ab")
    control = [make_run(client, experiment, {"ctr": v}) for v in (0.050, 0.052, 0.049)]
    treatment = [make_run(client, experiment, {"ctr": v}) for v in (0.058, 0.060, 0.057)]
    return control, treatment


def add(runner, *args: str) -> str:
    result = invoke(runner, "ledger", "add", *args)
    assert result.exit_code == 0, result.output
    return result.output.strip()


def test_every_ledger_command_has_help(runner) -> None:
    for name, command in ledger_group.commands.items():
        assert command.help, name
        result = invoke(runner, "ledger", name, "--help")
        assert result.exit_code == 0 and f"ledger {name} [OPTIONS]" in result.output
    assert invoke(runner, "suggest", "--help").exit_code == 0


def test_add_prints_the_id_and_rejects_bad_input(runner, tracking_uri) -> None:
    assert add(runner, "Bigger pools raise CTR", "--id", "pools", "--metric", "ctr", "--expect", "+2%",
               "--owner", "reco", "--tag", "area=ranking") == "pools"
    assert add(runner, "Warm caches cut latency") == "warm-caches-cut-latency"
    duplicate = invoke(runner, "ledger", "add", "Again", "--id", "pools")
    assert duplicate.exit_code == 2
    assert "Error: --id: hypothesis 'pools' already exists; pick another id" in duplicate.output
    bad_expect = invoke(runner, "ledger", "add", "X", "--expect", "lots")
    assert bad_expect.exit_code == 2
    assert "Error: --expect: bad expected effect 'lots': give a relative change such as +2%" in (
        bad_expect.output
    )
    bad_id = invoke(runner, "ledger", "add", "X", "--id", "Not A Slug")
    assert bad_id.exit_code == 2 and "is not a valid id" in bad_id.output
    bad_tag = invoke(runner, "ledger", "add", "X", "--tag", "novalue")
    assert bad_tag.exit_code == 2 and "--tag 'novalue': use KEY=VALUE" in bad_tag.output
    reserved = invoke(runner, "ledger", "add", "X", "--tag", "okr.ledger.status=validated")
    assert reserved.exit_code == 2 and "must be non-empty and not start with okr." in reserved.output


def test_link_evaluate_resolve(runner, arms) -> None:
    control, treatment = arms
    add(runner, "Bigger pools raise CTR", "--id", "pools", "--metric", "ctr", "--expect", "+5%")
    linked = invoke(runner, "ledger", "link", "pools", *control, "--arm", "control")
    assert linked.exit_code == 0
    assert linked.output.strip() == (
        "Linked 3 run(s) to pools as control: now 3 control, 0 treatment; status testing."
    )
    assert invoke(runner, "ledger", "link", "pools", *treatment).exit_code == 0

    table = invoke(runner, "ledger", "evaluate", "pools")
    assert table.exit_code == 0
    assert "Hypothesis pools: metric ctr (welch)" in table.output
    assert "  control     n=3    mean=0.0503333" in table.output
    assert "Suggested verdict: validated" in table.output

    as_json = invoke(runner, "ledger", "evaluate", "pools", "--format", "json")
    payload = json.loads(as_json.output)
    for key in ("hypothesis", "metric", "control", "treatment", "effect", "relative_effect", "ci_low",
                "ci_high", "p_value", "suggested_verdict"):
        assert key in payload, key
    assert payload["control"] == {"n": 3, "mean": pytest.approx(0.151 / 3)}
    assert payload["treatment"]["n"] == 3
    assert payload["effect"] == pytest.approx(0.175 / 3 - 0.151 / 3)
    assert payload["ci_low"] < payload["effect"] < payload["ci_high"]

    resolved = invoke(runner, "ledger", "resolve", "pools", "validated", "--note", "CTR up 15%",
                      "--at", "2026-11-10")
    assert resolved.exit_code == 0
    assert resolved.output.strip() == "Resolved pools: validated (2026-11-10 00:00 UTC)."
    twice = invoke(runner, "ledger", "resolve", "pools", "invalidated", "--note", "changed my mind")
    assert twice.exit_code == 2
    assert "Error: hypothesis 'pools' is already resolved: validated on 2026-11-10" in twice.output


def test_evaluate_with_too_little_data_says_why(runner, arms) -> None:
    control, treatment = arms
    add(runner, "Pools", "--id", "pools", "--metric", "ctr")
    invoke(runner, "ledger", "link", "pools", control[0], "--arm", "control")
    invoke(runner, "ledger", "link", "pools", *treatment)
    result = invoke(runner, "ledger", "evaluate", "pools", "--format", "json")
    payload = json.loads(result.output)
    assert result.exit_code == 0
    assert payload["suggested_verdict"] == "inconclusive"
    assert payload["reason"] == "too little data: control has 1 run(s) with ctr; need at least 2 per arm"
    assert payload["p_value"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ledger", "link", "nope", "RUN"), "Error: unknown hypothesis 'nope'"),
        (("ledger", "link", "pools", "0123456789abcdef0123456789abcdef"),
         "Error: run '0123456789abcdef0123456789abcdef' does not exist in this MLflow backend"),
        (("ledger", "link", "pools", "RUN", "--arm", "placebo"), "Invalid value for '--arm': 'placebo'"),
        (("ledger", "evaluate", "nope"), "Error: unknown hypothesis 'nope'"),
        (("ledger", "resolve", "nope", "validated", "--note", "x"), "Error: unknown hypothesis 'nope'"),
        (("ledger", "resolve", "pools", "maybe", "--note", "x"), "Invalid value for '{validated|invalidated"),
        (("ledger", "resolve", "pools", "validated"), "Missing option '--note'"),
        (("ledger", "show", "pool"), "Error: unknown hypothesis 'pool'; did you mean 'pools'?"),
        (("ledger", "list", "--status", "done"), "Invalid value for '--status'"),
        (("ledger", "import", "missing.jsonl"), "Error: missing.jsonl: no such file"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(runner, arms, args, message) -> None:
    add(runner, "Pools", "--id", "pools")
    args = tuple(arms[0][0] if arg == "RUN" else arg for arg in args)
    result = invoke(runner, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_list_show_search(runner, arms) -> None:
    control, _ = arms
    add(runner, "Bigger pools raise CTR", "--id", "pools", "--metric", "ctr", "--owner", "reco")
    add(runner, "Warm caches cut latency", "--id", "cache")
    invoke(runner, "ledger", "link", "pools", *control, "--arm", "control")
    invoke(runner, "ledger", "resolve", "cache", "invalidated", "--note", "Caches were already warm")

    table = invoke(runner, "ledger", "list")
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "KR", "METRIC", "C/T", "Q", "STATEMENT"]
    assert lines[1].split()[:6] == ["pools", "testing", "-", "ctr", "3/0", "-"]
    assert lines[2].split()[:2] == ["cache", "invalidated"]
    assert lines[3:] == [
        "",
        "Track record (whole ledger): 2 tried, 0 validated, 1 invalidated, 0 inconclusive, 1 open",
        "  win rate by objective: (none) 0/1 (0%)",
        "  win rate by owner:     reco 0/0 (n/a); (none) 0/1 (0%)",
    ]

    listed = invoke(runner, "ledger", "list", "--status", "invalidated", "--format", "json")
    as_json = json.loads(listed.output)
    assert [(h["id"], h["learning"]) for h in as_json] == [("cache", "Caches were already warm")]
    as_csv = invoke(runner, "ledger", "list", "--metric", "ctr", "--format", "csv").output.splitlines()
    assert as_csv[0].startswith("id,status,statement,kr,objective,metric")
    assert as_csv[1].startswith("pools,testing,Bigger pools raise CTR,,,ctr")
    assert invoke(runner, "ledger", "list", "--kr", "ctr").output.strip() == "No hypotheses."

    shown = invoke(runner, "ledger", "show", "pools")
    assert shown.exit_code == 0
    assert shown.output.startswith("pools: Bigger pools raise CTR\n  status: testing\n")
    assert f"  control   {control[0]}" in shown.output
    assert "History:" in shown.output
    assert ": link 3 run(s) as control" in shown.output
    cache = invoke(runner, "ledger", "show", "cache", "--format", "json")
    assert [e["action"] for e in json.loads(cache.output)["events"]] == ["add", "resolve"]

    found = invoke(runner, "ledger", "search", "already warm")
    assert found.exit_code == 0
    assert [line.split()[0] for line in found.output.splitlines()[1:]] == ["cache"]


def test_export_import_verify(runner, arms, tmp_path, client, sqlite_template) -> None:
    control, treatment = arms
    add(runner, "Pools", "--id", "pools", "--metric", "ctr")
    invoke(runner, "ledger", "link", "pools", *control, "--arm", "control")
    invoke(runner, "ledger", "resolve", "pools", "inconclusive", "--note", "Too noisy")
    path = tmp_path / "ledger.jsonl"
    exported = invoke(runner, "ledger", "export", "-o", str(path))
    assert exported.exit_code == 0 and exported.output.strip() == f"Exported 3 events to {path}."
    assert invoke(runner, "ledger", "export").output == path.read_text(encoding="utf-8")

    import shutil

    shutil.copyfile(sqlite_template, tmp_path / "other.db")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    first = invoke(runner, "ledger", "import", str(path), "--tracking-uri", other)
    assert first.exit_code == 0
    assert first.output.strip() == f"Imported {path}: 1 created, 0 updated, 0 unchanged (3 events written)."
    second = invoke(runner, "ledger", "import", str(path), "--tracking-uri", other)
    assert second.output.strip() == f"Imported {path}: 0 created, 0 updated, 1 unchanged (0 events written)."
    round_trip = invoke(runner, "ledger", "export", "--tracking-uri", other)
    assert round_trip.output == path.read_text(encoding="utf-8")

    broken = tmp_path / "broken.jsonl"
    broken.write_text(path.read_text(encoding="utf-8") + "[1, 2]\n", encoding="utf-8")
    bad = invoke(runner, "ledger", "import", str(broken))
    assert bad.exit_code == 2
    assert f"Error: {broken}:4: not a ledger event" in bad.output

    ok = invoke(runner, "ledger", "verify")
    assert ok.exit_code == 0
    assert ok.output.strip() == "Ledger verified: 1 hypotheses, 3 events, chains intact."

    run = client.search_runs([client.get_experiment_by_name("okr/ledger").experiment_id])[0]
    key = event_tag(3, run.data.params[seal_param(3)])
    tampered = json.loads(run.data.tags[key])
    tampered["changes"]["note"] = "It worked all along"
    client.set_tag(run.info.run_id, key, json.dumps(tampered))
    failed = invoke(runner, "ledger", "verify")
    assert failed.exit_code == 1
    assert failed.output.splitlines()[0] == (
        "Error: Ledger verification failed: hypothesis 'pools' event 3 (resolve): content does not match "
        "its hash (the event was edited)"
    )
    refused = invoke(runner, "ledger", "export")
    assert refused.exit_code == 1 and "not exporting a ledger that fails" in refused.output

    # The other store was not touched: an edited state tag there is caught too.
    other_client = MlflowClient(other)
    other_run = other_client.search_runs([other_client.get_experiment_by_name("okr/ledger").experiment_id])[0]
    other_client.set_tag(other_run.info.run_id, vocabulary.TAG_LEDGER_STATUS, "validated")
    edited = invoke(runner, "ledger", "verify", "--tracking-uri", other)
    assert edited.exit_code == 1
    assert ("hypothesis 'pools': tag okr.ledger.status is 'validated' but its events say 'inconclusive'"
            in edited.output)


def test_ledger_writes_through_an_okr_uri_trigger_no_hooks(runner, tracking_uri, write_spec, monkeypatch):
    spec = write_spec(
        """
        version: 1
        cycle: 2026-Q4
        objectives:
          - id: research
            title: Learn what works
            category: research
            key_results:
              - id: validated
                source: ledger
                target: 2
        """
    )
    okr_uri = "okr+" + tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", okr_uri)
    assert invoke(runner, "apply", str(spec)).exit_code == 0
    add(runner, "Pools", "--id", "pools")
    resolved = invoke(runner, "ledger", "resolve", "pools", "validated", "--note", "y", "--at", "2026-11-10")
    assert resolved.exit_code == 0
    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("okr/ledger").experiment_id])[0]
    assert not [key for key in run.data.tags if key in ("okr.cycle", "okr.krs") or key.startswith("okr.kr.")]
    check = invoke(runner, "sync", "--check", "--as-of", "2026-11-15")
    assert check.exit_code == 0, check.output
    status = json.loads(invoke(runner, "status", "--format", "json").output)
    assert status["objectives"][0]["key_results"][0]["current"] == 1.0
