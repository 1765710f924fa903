"""Which source runs a KR looks at, how each run stands for it, and the okr.* tags that follow.

A KR's scope is its experiments, its filter and the cycle's dates; within it the engine gives each
run a verdict (counted, pending, excluded with a reason kind). `sync` and the live store both ask
here, so a run stands the same for both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from mlflow_okr import compat, state, vocabulary
from mlflow_okr.datasets import DatasetValues, dataset_values
from mlflow_okr.engine import RunFacts, RunRule, Verdict, classify_run, value_text
from mlflow_okr.facts import CHUNK, FactKeys, TagChanges, reader_for
from mlflow_okr.spec import OkrSpec

MAX_FILTER_ANSWERS = 1024  # answers a filter clause keeps, one per value of what it reads


def run_facts(run: Any) -> RunFacts:
    """The facts the engine scores, from a `Run` or a lean run view."""
    return RunFacts(
        run_id=run.info.run_id,
        start_time=run.info.start_time,
        status=run.info.status,
        metrics=run.data.metrics,
        deleted=run.info.lifecycle_stage == "deleted",
    )


class RunFilter:
    """An MLflow search filter, parsed once, tested against runs in memory with MLflow's grammar."""

    def __init__(self, filter_string: str | None):
        from mlflow.utils.search_utils import SearchUtils

        self.filter_string = filter_string or ""
        self._clauses = SearchUtils.parse_search_filter(self.filter_string)
        self.everything = not self._clauses
        # A filter on okr.* tags may change its answer while a pass plans a run's tags set by set.
        self.reads_okr_tags = any(
            clause["type"] == "tag" and vocabulary.is_okr_key(clause["key"]) for clause in self._clauses
        )
        # Per clause: how it reads a run, and MLflow's answer for each value seen (a pass asks for
        # every run, and a clause such as `tags.stage = 'candidate'` sees a few values).
        self._operands = [compat.clause_operand(clause) for clause in self._clauses]
        self._answers: list[dict[Any, bool]] = [{} for _ in self._clauses]

    def matches(self, run: Any) -> bool:
        for clause, operand, answers in zip(self._clauses, self._operands, self._answers, strict=True):
            if operand is None:
                if not compat.run_matches_clause(run, clause):
                    return False
                continue
            value = operand(run)
            answer = answers.get(value)
            if answer is None:
                answer = compat.run_matches_clause(run, clause)
                if len(answers) >= MAX_FILTER_ANSWERS:  # an attribute such as start_time: few repeats
                    answers.clear()
                answers[value] = answer
            if not answer:
                return False
        return True

    def matches_once(self, run: Any, matched: dict[str, bool]) -> bool:
        """`matches`, answered once per filter text for one run: KRs and sets often share a filter."""
        if not self._clauses:
            return True
        if self.reads_okr_tags:
            return self.matches(run)
        found = matched.get(self.filter_string)
        if found is None:
            found = matched[self.filter_string] = self.matches(run)
        return found

    def keys(self) -> FactKeys:
        """The metric, tag and param keys the filter reads (not lean when it reads datasets)."""
        kinds: dict[str, set[str]] = {"metric": set(), "tag": set(), "parameter": set()}
        lean = True
        for clause in self._clauses:
            if clause["type"] in kinds:
                kinds[clause["type"]].add(clause["key"])
            elif clause["type"] == "dataset":
                lean = False
        return FactKeys(
            frozenset(kinds["metric"]), frozenset(kinds["tag"]), frozenset(kinds["parameter"]), lean
        )


@dataclass
class Scope:
    """Which source runs a metric KR looks at: experiments, a parsed filter, and its run rule."""

    experiment_ids: frozenset[str]
    run_filter: RunFilter
    rule: RunRule
    datasets: DatasetValues | None = None  # a dataset-pinned KR: its runs' values for that dataset

    def __post_init__(self) -> None:
        # What decides a run's verdict besides the run: KRs of several sets often share it.
        self.verdict_key = f"{self.rule.metric}\x00{self.rule.guardrails!r}"


@dataclass
class RunMemo:
    """What a pass that hands one run to several sets works out once: the run's facts, each
    filter's answer (by filter text) and each verdict (by `Scope.verdict_key`)."""

    facts: RunFacts
    filters: dict[str, bool] = field(default_factory=dict)
    verdicts: dict[str, Verdict | None] = field(default_factory=dict)

    @classmethod
    def of(cls, run: Any) -> RunMemo:
        return cls(run_facts(run))


@dataclass
class CycleScan:
    """Everything a pass over the source runs needs to know about the cycle's metric KRs."""

    spec: OkrSpec
    scopes: dict[str, Scope] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.window = (self.spec.cycle.start_ms, self.spec.cycle.end_ms)  # asked for every run
        self._by_experiment: dict[tuple[str, int], list[tuple[str, Scope]]] = {}  # scopes looking there

    def _scopes_in(self, experiment_id: str) -> list[tuple[str, Scope]]:
        """The (KR id, scope) pairs whose experiments include `experiment_id`, in KR order."""
        key = (experiment_id, len(self.scopes))  # `build` adds the scopes after init
        found = self._by_experiment.get(key)
        if found is None:
            scopes = self.scopes.items()
            found = [(kr_id, scope) for kr_id, scope in scopes if experiment_id in scope.experiment_ids]
            self._by_experiment[key] = found
        return found

    @classmethod
    def build(
        cls,
        client: MlflowClient,
        spec: OkrSpec,
        kr_ids: Iterable[str] | None = None,
        experiments: list[Any] | None = None,
    ) -> CycleScan:
        """The scan of these KRs (default: all), over `experiments` (default: listed now)."""
        wanted = set(kr_ids) if kr_ids is not None else None
        scan = cls(spec)
        if experiments is None:
            experiments = state.source_experiments(client)  # listed once for every KR
        for _, kr in spec.key_results():
            # A `model:` KR counts the one run its alias names, not the runs of a scope.
            if kr.metric is None or kr.model is not None or (wanted is not None and kr.id not in wanted):
                continue
            experiment_ids = frozenset(state.match_experiments(experiments, kr.experiments))
            scan.scopes[kr.id] = Scope(experiment_ids, RunFilter(kr.filter), kr.rule())
            if kr.dataset is not None:
                values = dataset_values(client, sorted(experiment_ids), kr.metric, kr.dataset)
                scan.scopes[kr.id].datasets = values
        return scan

    @property
    def experiment_ids(self) -> list[str]:
        return sorted({e for scope in self.scopes.values() for e in scope.experiment_ids})

    def fact_keys(self) -> FactKeys:
        """What a reader must return for these KRs: their metrics, filter keys and okr.* tags."""
        managed = {vocabulary.TAG_KRS, vocabulary.TAG_CYCLE}
        for _, kr in self.spec.key_results():
            if kr.metric:
                managed |= _kr_tags(self.spec, kr.id)
        keys = FactKeys(tags=frozenset(managed))
        for scope in self.scopes.values():
            rule = scope.rule
            metrics = {rule.metric} | {guardrail.metric for guardrail in rule.guardrails}
            keys = keys.merge(FactKeys(metrics=frozenset(metrics))).merge(scope.run_filter.keys())
        return keys

    def verdicts(self, run: Any, memo: RunMemo | None = None) -> dict[str, Verdict]:
        """The verdict of every KR that concerns `run` (KR id -> verdict).

        A pass that hands the run to several sets shares its `memo` among them.
        """
        start_time = run.info.start_time
        if start_time is None or not self.window[0] <= start_time <= self.window[1]:
            return {}
        memo = RunMemo.of(run) if memo is None else memo
        facts, decided = memo.facts, memo.verdicts
        verdicts = {}
        for kr_id, scope in self._scopes_in(run.info.experiment_id):
            run_filter = scope.run_filter
            if not run_filter.everything and not run_filter.matches_once(run, memo.filters):
                continue
            if scope.datasets is not None:
                verdict = scope.datasets.verdict(scope.rule, facts)
            else:
                key = scope.verdict_key
                if key in decided:
                    verdict = decided[key]
                else:
                    verdict = decided[key] = classify_run(scope.rule, facts)
            if verdict is not None:
                verdicts[kr_id] = verdict
        return verdicts


@dataclass(frozen=True)
class RunTagNames:
    """How a spec names its KRs on source runs, worked out once per spec: a pass asks for every run."""

    tag_ids: dict[str, str]  # KR id -> `<id>`, or `<id>/<cycle>` once the id is shared
    verdict_tags: dict[str, str]  # KR id -> okr.kr.<tag id>
    value_tags: dict[str, str]  # KR id -> okr.kr.<tag id>.value
    own: frozenset[str]  # both spellings of each KR id: the okr.krs entries that are the spec's
    managed: frozenset[str]  # okr.krs and every verdict and value tag of the spec's KRs
    summing: frozenset[str]
    cycle_name: str
    inner_cycles: tuple[tuple[int, int, str], ...]  # OkrSpec.inner_cycles, read once
    # (okr.krs as stored, counted KR ids) -> okr.krs as desired: runs share a few of each.
    listed: dict[tuple[str | None, tuple[str, ...]], str] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, spec: OkrSpec) -> RunTagNames:
        cached = _NAMES.get(id(spec))
        if cached is not None and cached[0] is spec:  # the very object: an id is reused only once freed
            return cached[1]
        kr_ids = [kr.id for _, kr in spec.key_results()]
        tag_ids = {kr_id: spec.run_tag_id(kr_id) for kr_id in kr_ids}
        managed = {vocabulary.TAG_KRS}
        for kr_id in kr_ids:
            managed |= _kr_tags(spec, kr_id)
        names = cls(
            tag_ids,
            {kr_id: vocabulary.source_tag(tag_id) for kr_id, tag_id in tag_ids.items()},
            {kr_id: vocabulary.value_tag(tag_id) for kr_id, tag_id in tag_ids.items()},
            frozenset(kr_ids) | frozenset(tag_ids.values()),
            frozenset(managed),
            spec.summing_kr_ids,
            spec.cycle.name,
            spec.inner_cycles,
        )
        if len(_NAMES) >= MAX_CACHED_NAMES:
            _NAMES.clear()
        _NAMES[id(spec)] = (spec, names)
        return names

    def run_cycle(self, start_ms: int) -> str:
        """The okr.cycle of a run the spec counts, started at `start_ms`: the innermost published
        cycle containing its start, the rule the run context tags new runs by."""
        for start, end, name in self.inner_cycles:
            if start <= start_ms <= end:
                return name
        return self.cycle_name


MAX_CACHED_NAMES = 256
_NAMES: dict[int, tuple[OkrSpec, RunTagNames]] = {}  # id(spec) -> (spec, names); specs are not mutated


def desired_run_tags(spec: OkrSpec, verdicts: dict[str, Verdict], run: Any) -> dict[str, str]:
    """The okr.* tags a source run should carry for these verdicts.

    Cycles may overlap (2026-Q4 inside 2026-H2): okr.krs keeps the ids the run lists for other
    cycles' KRs, so that each cycle's sync leaves the other's ids alone, and okr.cycle names the
    innermost published cycle containing the run's start, whichever set plans it.
    """
    names = RunTagNames.of(spec)
    counted = tuple(kr_id for kr_id, verdict in verdicts.items() if verdict.state == "counted")
    listed = _listed_text(names, run.data.tags.get(vocabulary.TAG_KRS), counted)
    verdict_tags = names.verdict_tags
    tags = {verdict_tags[kr_id]: verdict.tag_value for kr_id, verdict in verdicts.items()}
    # A sum or mean KR is revised by taking the run's old value out: the run keeps it in a tag.
    for kr_id in names.summing.intersection(counted):
        value = verdicts[kr_id].value
        assert value is not None
        tags[names.value_tags[kr_id]] = value_text(value)
    if listed:
        tags[vocabulary.TAG_KRS] = listed
    if verdicts:
        tags[vocabulary.TAG_CYCLE] = names.run_cycle(run.info.start_time)
    return tags


def _listed_text(names: RunTagNames, stored: str | None, counted: tuple[str, ...]) -> str:
    """okr.krs as a run should carry it ("" for none): the counted KRs' tag ids, and the ids the
    run lists now (`stored`) for other cycles' KRs. Both spellings of an own KR are ours, so a tag
    written before its id became shared is replaced."""
    key = (stored, counted)
    text = names.listed.get(key)
    if text is None:
        listed = {names.tag_ids[kr_id] for kr_id in counted}
        if stored:
            listed |= {name for name in stored.split(",") if name and name not in names.own}
        text = ",".join(sorted(listed))
        if len(names.listed) >= MAX_CACHED_NAMES:
            names.listed.clear()
        names.listed[key] = text
    return text


def run_tags_settled(spec: OkrSpec, run: Any, verdicts: dict[str, Verdict]) -> bool:
    """True when `plan_run_tags` would find nothing drifted: the steady state, where a pass asks
    for every run, answered without building the plan (the same tags, compared one by one)."""
    names = RunTagNames.of(spec)
    tags = run.data.tags
    get = tags.get
    verdict_tags, value_tags, summing = names.verdict_tags, names.value_tags, names.summing
    wanted = len(verdicts)  # the managed tags the run should carry; when the counts agree, no others
    counted = []
    for kr_id, verdict in verdicts.items():
        if get(verdict_tags[kr_id]) != verdict.tag_value:
            return False
        if verdict.state == "counted":
            counted.append(kr_id)
            if kr_id in summing:
                value = verdict.value
                assert value is not None
                if get(value_tags[kr_id]) != value_text(value):
                    return False
                wanted += 1
    stored = get(vocabulary.TAG_KRS)
    listed = _listed_text(names, stored, tuple(counted))
    if listed:
        if stored != listed:
            return False
        wanted += 1
    if verdicts and get(vocabulary.TAG_CYCLE) != names.run_cycle(run.info.start_time):
        return False
    return len(names.managed.intersection(tags)) == wanted


def managed_run_tags(spec: OkrSpec, run: Any) -> dict[str, str]:
    """The okr.* tags of this cycle's KRs that `run` carries now."""
    keys = RunTagNames.of(spec).managed
    return {key: value for key, value in run.data.tags.items() if key in keys}


def _kr_tags(spec: OkrSpec, kr_id: str) -> set[str]:
    """The tags a run may carry for KR `kr_id`: verdict and value, under its id and, once the id
    is shared with another cycle, under `<id>/<cycle>` (the bare ones are then stale)."""
    names = {kr_id, spec.run_tag_id(kr_id)}
    return {vocabulary.source_tag(name) for name in names} | {vocabulary.value_tag(name) for name in names}


@dataclass
class RunTagPlan:
    """How a source run's okr.* tags differ from what its verdicts call for."""

    current: dict[str, str]
    desired: dict[str, str]
    changed: dict[str, str]
    stale: list[str]

    @property
    def drifted(self) -> bool:
        return bool(self.changed or self.stale)

    def changes(self) -> TagChanges | None:
        """What writing the plan changes on the run; None when nothing drifted."""
        return TagChanges(dict(self.changed), list(self.stale)) if self.drifted else None


def plan_run_tags(spec: OkrSpec, run: Any, verdicts: dict[str, Verdict]) -> RunTagPlan:
    """Compare the run's managed tags, and its okr.cycle when it has verdicts, with the desired
    ones. A run without verdicts keeps its okr.cycle (the run context's, or another set's)."""
    current = managed_run_tags(spec, run)
    desired = desired_run_tags(spec, verdicts, run)
    stored_cycle = run.data.tags.get(vocabulary.TAG_CYCLE)
    changed = {
        k: v for k, v in desired.items()
        if (stored_cycle if k == vocabulary.TAG_CYCLE else current.get(k)) != v
    }
    stale = [k for k in current if k not in desired]
    return RunTagPlan(current, desired, changed, stale)


def apply_tag_changes(run: Any, changes: TagChanges) -> None:
    """Give `run` in memory the tags that writing `changes` leaves it, so that the plan of another
    set for the same run (okr.krs lists the KRs of every set) starts from them."""
    tags = run.data.tags
    for key in changes.remove:
        tags.pop(key, None)
    tags.update(changes.put)


class RunTagWrites:
    """Run tag writes gathered over many runs and written CHUNK runs at a time.

    Inside a SQL store each write is one transaction (`SqlFacts.write_tags`); elsewhere one
    `log_batch` per run. Call `flush` once the runs are planned; nothing is written before.
    """

    def __init__(self, client: MlflowClient, write: bool = True):
        self._writer = reader_for(client) if write else None  # not `write`: plan, write nothing
        self._pending: dict[str, TagChanges] = {}

    def add(self, run: Any, plan: RunTagPlan) -> bool:
        """Plan `run`'s drifted tags for writing; True when it has any."""
        changes = plan.changes()
        if changes is None:
            return False
        apply_tag_changes(run, changes)  # another set's plan for this run starts from these
        earlier = self._pending.get(run.info.run_id)
        if earlier is not None:  # the run is in two overlapping cycles: write both plans
            merged = {**earlier.put, **changes.put}
            changes.put = {key: value for key, value in merged.items() if key not in changes.remove}
            changes.remove = [key for key in {*earlier.remove, *changes.remove} if key not in changes.put]
        self._queue(run.info.run_id, changes)
        return True

    def add_since(self, run: Any, original: dict[str, str]) -> None:
        """Write what `run`'s tags in memory now differ from its tags as read (`original`): the
        plans of several sets, applied to the run one after the other."""
        tags = run.data.tags
        put = {key: value for key, value in tags.items() if original.get(key) != value}
        remove = [key for key in original if key not in tags]
        if put or remove:
            self._queue(run.info.run_id, TagChanges(put, remove))

    def _queue(self, run_id: str, changes: TagChanges) -> None:
        if self._writer is None:
            return
        self._pending[run_id] = changes
        if len(self._pending) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        if pending and self._writer is not None:
            self._writer.write_tags(pending)
