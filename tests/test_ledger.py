"""The ledger on a real MLflow store: storage, events, verification, export/import, ledger KRs."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

from mlflow_okr import state, vocabulary
from mlflow_okr.api import sync
from mlflow_okr.errors import ConcurrentChange, InputError
from mlflow_okr.ledger import (
    add_hypothesis,
    evaluate_hypothesis,
    export_ledger,
    get_hypothesis,
    hypotheses_frame,
    import_ledger,
    link_runs,
    list_hypotheses,
    resolve_hypothesis,
    search_hypotheses,
    store,
    verify_ledger,
)
from mlflow_okr.ledger import api as ledger_api
from mlflow_okr.ledger.events import event_hash, event_tag, event_text, legacy_event_tag, seal, seal_param
from mlflow_okr.ledger.models import SUMMARY_COLUMNS, replay
from tests.conftest import NOW, invoke, make_run


def event_key(client: MlflowClient, run_id: str, number: int) -> str:
    """The tag that holds sealed event `number` of a hypothesis run."""
    return event_tag(number, client.get_run(run_id).data.params[seal_param(number)])


def utc(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=dt.timezone.utc)


def ledger_run(client: MlflowClient, hypothesis_id: str):
    return client.get_run(get_hypothesis(hypothesis_id).run_id)


def test_add_stores_one_run_per_hypothesis_with_state_in_tags(client) -> None:
    hypothesis = add_hypothesis(
        "Bigger candidate pools raise CTR",
        metric="online_ctr",
        expect="+2%",
        owner="reco-team",
        tags={"area": "ranking"},
        who="alice",
    )
    assert hypothesis.id == "bigger-candidate-pools-raise-ctr"
    assert hypothesis.status == "proposed"
    experiment = client.get_experiment_by_name("okr/ledger")
    run = client.get_run(hypothesis.run_id)
    assert run.info.experiment_id == experiment.experiment_id
    assert run.info.run_name == hypothesis.id
    tags = run.data.tags
    assert tags[vocabulary.TAG_LEDGER_ID] == hypothesis.id
    assert tags[vocabulary.TAG_LEDGER_STATUS] == "proposed"
    assert tags["okr.ledger.metric"] == "online_ctr"
    assert tags["okr.ledger.expect"] == "+2%"
    assert tags["okr.ledger.owner"] == "reco-team"
    assert tags["area"] == "ranking"
    assert "Bigger candidate pools raise CTR" in tags["mlflow.note.content"]
    first = json.loads(tags[event_key(client, run.info.run_id, 1)])
    assert run.data.params[seal_param(1)] == first["hash"]
    assert first["who"] == "alice" and first["action"] == "add" and first["prev"] == ""
    assert first["hash"] == event_hash(first)
    # A second statement with the same words gets a fresh slug; an explicit duplicate id is refused.
    assert add_hypothesis("Bigger candidate pools raise CTR").id == "bigger-candidate-pools-raise-ctr-2"
    with pytest.raises(InputError, match="already exists"):
        add_hypothesis("Something else", hypothesis_id="bigger-candidate-pools-raise-ctr")


def test_link_records_evidence_and_links_show_in_the_description(client) -> None:
    experiment = client.create_experiment("reco-ab")
    control = make_run(client, experiment, {"ctr": 0.05})
    treatment = make_run(client, experiment, {"ctr": 0.06})
    add_hypothesis("Pools", hypothesis_id="pools", metric="ctr")
    link_runs("pools", [control], arm="control", who="bob")
    hypothesis = link_runs("pools", [treatment, treatment])
    assert hypothesis.status == "testing"
    assert hypothesis.arm_runs("control") == [control]
    assert hypothesis.arm_runs("treatment") == [treatment]
    run = client.get_run(hypothesis.run_id)
    note = run.data.tags["mlflow.note.content"]
    # The route the report and the KR runs link: MLflow's classic runs view, not the GenAI one.
    assert f"[{treatment}](#/experiments/{experiment}/runs/{treatment}?workflowType=machine_learning)" in note
    assert run.data.tags["okr.ledger.runs.control"] == "1"
    # Linking the same run again is a no-op; as the other arm it is refused.
    assert len(link_runs("pools", [treatment]).events) == 3
    with pytest.raises(InputError, match="already linked to 'pools' as treatment"):
        link_runs("pools", [treatment], arm="control")
    with pytest.raises(InputError, match="does not exist"):
        link_runs("pools", ["0123456789abcdef0123456789abcdef"])
    with pytest.raises(InputError, match="unknown arm 'placebo'"):
        link_runs("pools", [control], arm="placebo")
    with pytest.raises(InputError, match="unknown hypothesis 'pool'; did you mean 'pools'"):
        link_runs("pool", [control])


def test_runs_tagged_with_the_hypothesis_are_linked_automatically(client) -> None:
    experiment = client.create_experiment("reco-ab")
    tags = {"okr.hypothesis": "pools", "okr.arm": "control"}
    control = make_run(client, experiment, {"ctr": 0.05}, tags=tags)
    treatment = make_run(client, experiment, {"ctr": 0.06}, tags={"okr.hypothesis": "pools"})
    make_run(client, experiment, {"ctr": 0.07}, tags={"okr.hypothesis": "other"})
    add_hypothesis("Pools", hypothesis_id="pools", metric="ctr")
    hypothesis = get_hypothesis("pools")
    assert hypothesis.status == "testing"
    assert hypothesis.arm_runs("control") == [control]
    assert hypothesis.arm_runs("treatment") == [treatment]
    assert all(item.auto for item in hypothesis.evidence)
    assert hypothesis.events[-1].who == "mlflow-okr (okr.hypothesis tag)"
    # Reading again links nothing new; list sees the same state.
    assert len(get_hypothesis("pools").events) == 2
    assert list_hypotheses()[0].evidence == hypothesis.evidence


def test_resolve_is_final_and_records_the_learning(client) -> None:
    add_hypothesis("Pools", hypothesis_id="pools")
    hypothesis = resolve_hypothesis("pools", "invalidated", "No lift at any pool size", who="carol",
                                    when=utc(2026, 11, 2))
    assert hypothesis.status == "invalidated"
    assert hypothesis.learning == "No lift at any pool size"
    run = client.get_run(hypothesis.run_id)
    assert run.data.tags[vocabulary.TAG_LEDGER_RESOLVED_AT] == str(int(utc(2026, 11, 2).timestamp() * 1000))
    assert run.info.status == "FINISHED"
    assert "No lift at any pool size" in run.data.tags["mlflow.note.content"]
    with pytest.raises(InputError, match="already resolved: invalidated on 2026-11-02 by carol"):
        resolve_hypothesis("pools", "validated", "second thoughts")
    with pytest.raises(InputError, match="unknown verdict"):
        resolve_hypothesis("pools", "maybe", "x")
    add_hypothesis("Other", hypothesis_id="other")
    with pytest.raises(InputError, match="a note is required"):
        resolve_hypothesis("other", "validated", "  ")


def test_list_filters_and_search(client) -> None:
    add_hypothesis("Bigger pools raise CTR", hypothesis_id="pools", metric="ctr", owner="reco")
    add_hypothesis("Caching cuts latency", hypothesis_id="cache", metric="p99_latency_ms")
    resolve_hypothesis("cache", "validated", "Warm caches halve p99")
    assert [h.id for h in list_hypotheses()] == ["pools", "cache"]
    assert [h.id for h in list_hypotheses(status="validated")] == ["cache"]
    assert [h.id for h in list_hypotheses(metric="ctr")] == ["pools"]
    assert [h.id for h in search_hypotheses("HALVE p99")] == ["cache"]
    assert [h.id for h in search_hypotheses("reco ctr")] == ["pools"]
    assert search_hypotheses("nothing like this") == []
    assert tuple(list_hypotheses()[0].summary()) == SUMMARY_COLUMNS
    frame = hypotheses_frame(list_hypotheses())
    assert list(frame["id"]) == ["pools", "cache"]
    assert list(frame["status"]) == ["proposed", "validated"]
    with pytest.raises(InputError, match="unknown status"):
        list_hypotheses(status="done")


def test_kr_and_objective_are_checked_against_the_published_cycle(client, runner, write_spec) -> None:
    spec = write_spec(SPEC)
    assert invoke(runner, "apply", str(spec)).exit_code == 0
    assert add_hypothesis("x", hypothesis_id="x", kr="ctr").objective == "reco"
    with pytest.raises(InputError, match="unknown KR 'ctrr'"):
        add_hypothesis("y", kr="ctrr")
    with pytest.raises(InputError, match="unknown objective 'nope'"):
        add_hypothesis("y", objective="nope")


# ---------------------------------------------------------------------------------------------
# verify


def _three_events(client: MlflowClient) -> str:
    experiment = client.create_experiment("reco-ab")
    add_hypothesis("Pools", hypothesis_id="pools", metric="ctr")
    link_runs("pools", [make_run(client, experiment, {"ctr": 0.05})], arm="control")
    resolve_hypothesis("pools", "inconclusive", "Too few runs")
    add_hypothesis("Second", hypothesis_id="second")
    assert verify_ledger().ok
    return get_hypothesis("pools").run_id


def test_verify_names_an_edited_event(client) -> None:
    run_id = _three_events(client)
    key = event_key(client, run_id, 2)
    event = json.loads(client.get_run(run_id).data.tags[key])
    event["changes"]["runs"][0]["arm"] = "treatment"
    client.set_tag(run_id, key, json.dumps(event, sort_keys=True, separators=(",", ":")))
    result = verify_ledger()
    assert not result.ok
    assert result.problems[0] == (
        "hypothesis 'pools' event 2 (link): content does not match its hash (the event was edited)"
    )


def test_verify_names_an_edited_state_tag(client) -> None:
    run_id = _three_events(client)
    client.set_tag(run_id, vocabulary.TAG_LEDGER_STATUS, "validated")
    result = verify_ledger()
    assert result.problems == [
        "hypothesis 'pools': tag okr.ledger.status is 'validated' but its events say 'inconclusive' "
        "(edited after event 3)"
    ]


def test_verify_accepts_a_description_whose_run_links_0_1_wrote_without_the_view(client) -> None:
    run_id = _three_events(client)
    note = client.get_run(run_id).data.tags["mlflow.note.content"]
    assert "?workflowType=machine_learning)" in note
    client.set_tag(run_id, "mlflow.note.content", note.replace("?workflowType=machine_learning)", ")"))
    assert verify_ledger().ok


def test_verify_notices_a_rewritten_chain_and_a_removed_event(client) -> None:
    run_id = _three_events(client)
    # Re-hash an edited event: its own hash holds, but event 3 no longer chains to it.
    key = event_key(client, run_id, 2)
    event = json.loads(client.get_run(run_id).data.tags[key])
    event["who"] = "mallory"
    event["hash"] = event_hash(event)
    client.set_tag(run_id, key, json.dumps(event))
    assert verify_ledger().problems[0] == (
        "hypothesis 'pools' event 3 (resolve): does not chain to event 2 (history was rewritten)"
    )
    client.delete_tag(run_id, event_key(client, run_id, 3))
    client.delete_tag(run_id, key)
    assert verify_ledger().problems[0] == (
        f"hypothesis 'pools' event 2: missing; it is sealed but its tag {key} was deleted"
    )


def test_verify_catches_a_rewritten_last_event_by_its_seal(client) -> None:
    # The whole chain still holds after re-hashing the last event; only the seal tells.
    run_id = _three_events(client)
    key = event_key(client, run_id, 3)
    event = json.loads(client.get_run(run_id).data.tags[key])
    event["changes"]["status"] = "validated"
    event["hash"] = event_hash(event)
    client.set_tag(run_id, key, json.dumps(event, sort_keys=True, separators=(",", ":")))
    assert verify_ledger().problems[0] == (
        "hypothesis 'pools' event 3 (resolve): differs from the event sealed when it was written "
        "(history was rewritten)"
    )
    # A param is write-once in MLflow: the seal cannot be moved to the forged event.
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        client.log_param(run_id, seal_param(3), event["hash"])


# ---------------------------------------------------------------------------------------------
# concurrent writers


def test_a_stale_append_loses_the_race_and_overwrites_nothing(client) -> None:
    experiment = client.create_experiment("reco-ab")
    add_hypothesis("Pools", hypothesis_id="pools", metric="ctr")
    first, second = (make_run(client, experiment, {"ctr": 0.05}) for _ in range(2))
    stale = get_hypothesis("pools")  # writer A reads the hypothesis ...
    link_runs("pools", [first], arm="control")  # ... writer B appends event 2 ...
    # ... and A, past its own checks, writes its event 2 from the state it read.
    event = seal("pools", 2, "a", 1, "link", {"runs": [{"run_id": second, "arm": "treatment",
                                                       "experiment_id": experiment}]}, stale.head)
    with pytest.raises(ConcurrentChange, match="'pools' changed while this command ran"):
        store.append_sealed(client, stale, [event])
    hypothesis = get_hypothesis("pools")
    assert [item.run_id for item in hypothesis.evidence] == [first]  # B's event stands
    run = client.get_run(hypothesis.run_id)
    assert [key for key in run.data.tags if key.startswith("okr.ledger.event.")] == [
        event_key(client, hypothesis.run_id, 1), event_key(client, hypothesis.run_id, 2)
    ]  # A's unsealed event was tidied away
    assert verify_ledger().ok


def test_a_ledger_written_before_seals_reads_and_is_sealed_on_its_next_change(client) -> None:
    # The layout of mlflow-okr 0.1.0: events in okr.ledger.event.NNNNNN tags, no seal params.
    experiment = client.create_experiment("reco-ab")
    events = [seal("pools", 1, "alice", 1, "add", {"statement": "Pools", "metric": "ctr"}, "")]
    ledger = store.ledger_experiment_id(client, create=True)
    run_id = client.create_run(ledger, start_time=1, tags={vocabulary.TAG_LEDGER_ID: "pools"}).info.run_id
    legacy_tags = {legacy_event_tag(1): event_text(events[0]), **store.state_tags(replay(events))}
    for key, value in legacy_tags.items():
        client.set_tag(run_id, key, value)
    assert get_hypothesis("pools").statement == "Pools"
    assert verify_ledger().ok
    evidence = make_run(client, experiment, {"ctr": 0.05})
    link_runs("pools", [evidence], arm="control")
    run = client.get_run(run_id)
    assert run.data.params[seal_param(1)] == events[0].hash  # sealed as it stood
    assert run.data.tags[legacy_event_tag(1)] == event_text(events[0])
    assert [e.action for e in get_hypothesis("pools").events] == ["add", "link"]
    assert verify_ledger().ok


def test_appends_past_mlflows_batch_limit_are_sealed_in_parts(client, monkeypatch) -> None:
    # One event per linked run: 101 new events, past MLflow's 100 params per request.
    monkeypatch.setattr(ledger_api, "LINKS_PER_EVENT", 1)
    experiment = client.create_experiment("reco-ab")
    add_hypothesis("Pools", hypothesis_id="pools", metric="ctr")
    run_ids = [client.create_run(experiment).info.run_id for _ in range(MAX_PARAMS_TAGS_PER_BATCH + 1)]
    hypothesis = link_runs("pools", run_ids, arm="treatment")
    assert len(hypothesis.events) == 1 + len(run_ids)
    params = client.get_run(hypothesis.run_id).data.params
    assert [params[seal_param(n)] for n in range(1, len(run_ids) + 2)] == [e.hash for e in hypothesis.events]
    assert sorted(item.run_id for item in get_hypothesis("pools").evidence) == sorted(run_ids)
    assert verify_ledger().ok


def test_a_partly_sealed_old_ledger_reads_whole(client) -> None:
    # Sealing an old run's events goes in parts: a reader between two parts sees every event.
    events = [seal("pools", 1, "alice", 1, "add", {"statement": "Pools"}, "")]
    for number in (2, 3):
        events.append(seal("pools", number, "al", number, "evaluate", {"n": number}, events[-1].hash))
    ledger = store.ledger_experiment_id(client, create=True)
    run_id = client.create_run(ledger, start_time=1).info.run_id
    tags = {legacy_event_tag(e.seq): event_text(e) for e in events}
    for key, value in {**tags, **store.state_tags(replay(events))}.items():
        client.set_tag(run_id, key, value)
    client.log_param(run_id, seal_param(1), events[0].hash)  # the first part landed, not the rest
    assert [e.seq for e in get_hypothesis("pools").events] == [1, 2, 3]
    assert verify_ledger().ok


def test_a_loser_sharing_the_winners_first_event_deletes_none_of_its_tags(client) -> None:
    add_hypothesis("Pools", hypothesis_id="pools", metric="ctr")
    before = get_hypothesis("pools")

    def events(last_note: str) -> list:
        shared = seal("pools", 2, "bot", 5, "evaluate", {"note": "same"}, before.head)
        return [shared, seal("pools", 3, "bot", 5, "evaluate", {"note": last_note}, shared.hash)]

    store.append_sealed(client, before, events("winner"))
    with pytest.raises(ConcurrentChange, match="nothing of it was recorded"):
        store.append_sealed(client, before, events("loser"))
    assert [e.changes.get("note") for e in get_hypothesis("pools").events] == [None, "same", "winner"]
    assert verify_ledger().ok


def test_an_evaluation_that_lost_its_p_value_drops_the_tag(client) -> None:
    experiment = client.create_experiment("reco-ab")
    add_hypothesis("Pools", hypothesis_id="pools", metric="ctr")
    control = [make_run(client, experiment, {"ctr": v}) for v in (0.10, 0.11, 0.12)]
    treatment = [make_run(client, experiment, {"ctr": v}) for v in (0.13, 0.14, 0.16)]
    link_runs("pools", control, arm="control")
    link_runs("pools", treatment, arm="treatment")
    evaluate_hypothesis("pools")
    run_id = get_hypothesis("pools").run_id
    assert "okr.ledger.p_value" in client.get_run(run_id).data.tags
    for evidence in control + treatment:
        client.delete_run(evidence)  # no evidence left: the next evaluation has no p-value
    assert evaluate_hypothesis("pools").p_value is None
    assert "okr.ledger.p_value" not in client.get_run(run_id).data.tags
    assert verify_ledger().ok


def test_concurrent_links_all_land(client) -> None:
    experiment = client.create_experiment("reco-ab")
    add_hypothesis("Pools", hypothesis_id="pools", metric="ctr")
    run_ids = [make_run(client, experiment, {"ctr": 0.05 + i / 100}) for i in range(8)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(run_ids))

    def link(run_id: str) -> None:
        barrier.wait()
        try:
            link_runs("pools", (r for r in [run_id]), arm="treatment")  # any iterable, read once
        except BaseException as error:  # noqa: BLE001 - collected and asserted on below
            errors.append(error)

    threads = [threading.Thread(target=link, args=(run_id,)) for run_id in run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    hypothesis = get_hypothesis("pools")
    assert sorted(item.run_id for item in hypothesis.evidence) == sorted(run_ids)
    assert len(hypothesis.events) == 1 + len(run_ids)
    assert client.get_run(hypothesis.run_id).data.tags["okr.ledger.runs.treatment"] == str(len(run_ids))
    assert verify_ledger().ok


def test_verify_reports_a_second_run_for_one_hypothesis(client) -> None:
    run_id = _three_events(client)
    ledger = client.get_run(run_id).info.experiment_id
    later = state.now_ms() + 1000
    forged = client.create_run(ledger, start_time=later, tags={vocabulary.TAG_LEDGER_ID: "pools"}).info.run_id
    assert verify_ledger().problems[0] == (
        f"hypothesis 'pools' has a second run {forged} besides {run_id}; commands read only one of them"
    )


def test_verify_reports_a_deleted_hypothesis(client) -> None:
    run_id = _three_events(client)
    client.delete_run(run_id)
    assert verify_ledger().problems == [
        f"hypothesis 'pools' (run {run_id}) was deleted; "
        f"restore it with `mlflow runs restore --run-id {run_id}`"
    ]


# ---------------------------------------------------------------------------------------------
# export / import


def test_export_import_round_trips_exactly(client, tmp_path, sqlite_template) -> None:
    experiment = client.create_experiment("reco-ab")
    add_hypothesis("Pools \"quoted\" é", hypothesis_id="pools", metric="ctr", expect="0.01", tags={"k": "v"})
    link_runs("pools", [make_run(client, experiment, {"ctr": 0.05})], arm="control")
    resolve_hypothesis("pools", "validated", "Learned: ünïcode survives", when=utc(2026, 11, 3))
    add_hypothesis("Open question", hypothesis_id="open", owner="dan")
    exported = tmp_path / "ledger.jsonl"
    text = export_ledger(exported)
    assert exported.read_text(encoding="utf-8") == text
    assert len(text.splitlines()) == 4

    shutil.copyfile(sqlite_template, tmp_path / "other.db")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    result = import_ledger(exported, tracking_uri=other)
    assert (sorted(result.created), result.events_written) == (["open", "pools"], 4)
    assert export_ledger(tracking_uri=other) == text
    again = import_ledger(exported, tracking_uri=other)
    assert (again.created, again.updated, sorted(again.unchanged)) == ([], [], ["open", "pools"])
    assert export_ledger(tracking_uri=other) == text
    assert verify_ledger(tracking_uri=other).ok
    other_client = MlflowClient(other)
    runs = other_client.search_runs([other_client.get_experiment_by_name("okr/ledger").experiment_id])
    assert len(runs) == 2
    imported = next(r for r in runs if r.data.tags[vocabulary.TAG_LEDGER_ID] == "pools")
    assert imported.data.tags == ledger_run(client, "pools").data.tags | {
        key: imported.data.tags[key] for key in ("mlflow.user", "mlflow.source.name", "mlflow.source.type")
        if key in imported.data.tags
    }

    # Newer events in the file extend an older copy of the same hypothesis.
    add_hypothesis("Third", hypothesis_id="third")
    resolve_hypothesis("open", "invalidated", "Closed")
    newer = tmp_path / "newer.jsonl"
    export_ledger(newer)
    extended = import_ledger(newer, tracking_uri=other)
    assert (extended.created, extended.updated, extended.events_written) == (["third"], ["open"], 2)
    assert export_ledger(tracking_uri=other) == newer.read_text(encoding="utf-8")


def test_import_rejects_malformed_lines_and_diverging_histories(client, tmp_path) -> None:
    add_hypothesis("Pools", hypothesis_id="pools")
    good = export_ledger()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\n{not json}\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.jsonl:3: not a ledger event"):
        import_ledger(bad)
    event = json.loads(good)
    event["changes"]["statement"] = "Rewritten"
    forged = tmp_path / "forged.jsonl"
    forged.write_text(json.dumps(event) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="hypothesis 'pools' event 1 \\(add\\): content does not match"):
        import_ledger(forged)
    event["hash"] = event_hash(event)
    forged.write_text(json.dumps(event) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="different history"):
        import_ledger(forged)
    with pytest.raises(InputError, match="no such file"):
        import_ledger(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------------------------
# Ledger KRs score through the foundation's path


SPEC = """
version: 1
cycle: 2026-Q4
objectives:
  - id: reco
    title: Better recommendations
    category: product
    key_results:
      - id: ctr
        metric: ctr
        baseline: 0.05
        target: 0.08
      - id: validated-any
        source: ledger
        target: 4
      - id: validated-reco
        source: ledger
        target: 3
        linked_to: reco
      - id: validated-ctr
        source: ledger
        target: 2
        linked_to: ctr
  - id: quality
    title: Keep quality high
    category: operational
    key_results:
      - id: validated-quality
        source: ledger
        target: 2
        linked_to: quality
"""


def test_ledger_krs_count_hypotheses_validated_in_the_cycle(client, runner, write_spec) -> None:
    assert invoke(runner, "apply", str(write_spec(SPEC))).exit_code == 0
    resolutions = [
        ("in-reco", {"objective": "reco"}, "validated", utc(2026, 10, 15)),
        ("in-ctr", {"kr": "ctr"}, "validated", utc(2026, 11, 1)),       # objective reco via its KR
        ("in-unlinked", {}, "validated", utc(2026, 12, 31, 23)),        # end date is inclusive
        ("before", {"kr": "ctr"}, "validated", utc(2026, 9, 30, 23)),   # out of the window
        ("after", {"objective": "reco"}, "validated", utc(2027, 1, 1)),  # out of the window
        ("refuted", {"kr": "ctr"}, "invalidated", utc(2026, 11, 2)),    # not validated
    ]
    for hypothesis_id, links, verdict, when in resolutions:
        add_hypothesis(f"Hypothesis {hypothesis_id}", hypothesis_id=hypothesis_id, **links)
        resolve_hypothesis(hypothesis_id, verdict, "learned", when=when)
    add_hypothesis("Still open", hypothesis_id="open", kr="ctr")

    result = sync(cycle="2026-Q4", now=NOW)
    krs = {kr.id: kr for kr in result.status.key_results()}
    expected = {
        "validated-any": (3, 0.75, "on-track"),
        "validated-reco": (2, 2 / 3, "on-track"),
        "validated-ctr": (1, 0.5, "on-track"),
        "validated-quality": (None, 0.0, "not-started"),
    }
    for kr_id, (current, progress, status) in expected.items():
        kr = krs[kr_id]
        assert (kr.current, kr.progress, kr.status) == (current, progress, status), kr_id
        assert kr.kind == "ledger" and kr.counted_runs == (current or 0)
    # Resolving refreshed the stored ledger KRs already: a check finds no drift.
    assert not sync(cycle="2026-Q4", check=True, now=NOW).kr_drift
    stored = invoke(runner, "status", "--format", "json", "--as-of", "2026-11-15")
    stored_krs = {kr["id"]: kr for o in json.loads(stored.output)["objectives"] for kr in o["key_results"]}
    assert stored_krs["validated-any"]["current"] == 3.0
    assert stored_krs["validated-reco"]["progress"] == 2 / 3
