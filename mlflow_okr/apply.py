"""Publish a spec as the `okr/<cycle>` experiment: create, update and retire objective/KR runs."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from mlflow.entities import Run, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from mlflow_okr import alignment, mlflow_ui, state, vocabulary
from mlflow_okr.errors import InputError, SpecError
from mlflow_okr.organization import set_status
from mlflow_okr.spec import KeyResult, Objective, OkrSpec
from mlflow_okr.vocabulary import KrStatus

Action = Literal["create", "update", "retire", "restore", "unchanged"]
RUNS_VIEW_TAGS = {mlflow_ui.EXPERIMENT_KIND_TAG: mlflow_ui.RUNS_VIEW_KIND}


class PlanStep(BaseModel):
    action: Action
    kind: Literal["cycle", "ledger", "objective", "kr"]
    id: str
    detail: str = ""


class ApplyPlan(BaseModel):
    """What `apply` did, or with `dry_run` would do."""

    cycle: str
    team: str | None = None
    experiment: str
    dry_run: bool
    steps: list[PlanStep]
    notes: list[str] = []  # what the apply leaves to do elsewhere (other sets of the cycle)

    @property
    def changes(self) -> list[PlanStep]:
        return [step for step in self.steps if step.action != "unchanged"]


def _owner(spec: OkrSpec) -> str:
    return f"team {spec.team!r}" if spec.team else "the unnamed set"


def _objective_tags(objective: Objective, team: str | None) -> dict[str, str]:
    tags = {
        vocabulary.TAG_ROLE: vocabulary.ROLE_OBJECTIVE,
        vocabulary.TAG_OBJECTIVE_ID: objective.id,
        vocabulary.TAG_OBJECTIVE_TITLE: objective.title,
        vocabulary.TAG_OBJECTIVE_CATEGORY: objective.category,
        state.MLFLOW_RUN_NOTE: f"**{objective.title}**\n\nCategory: {objective.category}"
        + (f"\n\nOwner: {objective.owner}" if objective.owner else ""),
    }
    if objective.owner:
        tags[vocabulary.TAG_OBJECTIVE_OWNER] = objective.owner
    # Only sets that use them carry these, so a 0.1 spec re-applied changes no run.
    if team:
        tags[vocabulary.TAG_TEAM] = team
    if objective.aligns_to:
        tags[vocabulary.TAG_OBJECTIVE_ALIGNS_TO] = ",".join(objective.aligns_to)
        tags[state.MLFLOW_RUN_NOTE] += f"\n\nAligns to: {', '.join(objective.aligns_to)}"
    return tags


def _kr_tags(kr: KeyResult, objective: Objective, parent_run_id: str) -> dict[str, str]:
    tags = {
        vocabulary.TAG_ROLE: vocabulary.ROLE_KR,
        vocabulary.TAG_KR_ID: kr.id,
        vocabulary.TAG_KR_DEFINITION: state.kr_definition(kr),
        vocabulary.TAG_OBJECTIVE_ID: objective.id,
        vocabulary.TAG_KR_KIND: kr.kind,
        state.MLFLOW_PARENT_RUN_ID: parent_run_id,
    }
    if kr.metric:
        tags[vocabulary.TAG_KR_METRIC] = kr.metric
    if kr.title:
        tags[vocabulary.TAG_KR_TITLE] = kr.title
    return tags


def _changed(run: Run, wanted: dict[str, str]) -> list[str]:
    return sorted(key for key, value in wanted.items() if run.data.tags.get(key) != value)


def _existing_runs(client: MlflowClient, experiment_id: str) -> tuple[dict[str, Run], dict[str, Run]]:
    objectives: dict[str, Run] = {}
    krs: dict[str, Run] = {}
    for run in state.iter_runs(client, [experiment_id], f"tags.`{vocabulary.TAG_ROLE}` != ''"):
        tags = run.data.tags
        if tags.get(vocabulary.TAG_ROLE) == "objective":
            objectives[tags[vocabulary.TAG_OBJECTIVE_ID]] = run
        elif tags.get(vocabulary.TAG_ROLE) == "kr":
            krs[tags[vocabulary.TAG_KR_ID]] = run
    return objectives, krs


class _Publisher:
    """Walks the spec against what is stored and records (and unless dry, performs) each step."""

    def __init__(self, client: MlflowClient, spec: OkrSpec, dry_run: bool):
        self.client = client
        self.spec = spec
        self.dry_run = dry_run
        self.steps: list[PlanStep] = []
        self.experiment_id: str | None = None

    def step(self, action: Action, kind: str, item_id: str, detail: str = "") -> bool:
        self.steps.append(PlanStep(action=action, kind=kind, id=item_id, detail=detail))
        return action != "unchanged" and not self.dry_run

    def create_run(self, name: str, tags: dict[str, str]) -> str:
        assert self.experiment_id is not None
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
        return run.info.run_id

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)

    def check_against_other_sets(self) -> list[str]:
        """KR ids unique across the cycle's sets, and every `aligns_to` names one parent, no loop.

        A new set must take dates a published set of its cycle has. A published set may change its
        cycle's dates (it goes first, the others follow, one apply each): the notes returned name
        the sets whose dates differ from these.
        """
        cycle = self.spec.cycle
        ours = (cycle.name, self.spec.team)
        published = [spec for spec, _ in state.published_specs(self.client)]
        others = [spec for spec in published if (spec.cycle.name, spec.team) != ours]
        same_cycle = [other for other in others if other.cycle.name == cycle.name]
        differing = [other for other in same_cycle if other.cycle != cycle]
        problems, notes = [], []
        joining = len(others) == len(published)
        if differing and joining and len(differing) == len(same_cycle):
            ranges = ", ".join(f"{other.cycle.dates} in the set of {_owner(other)}" for other in differing)
            problems.append(
                f"{self.spec.where('cycle')}: cycle {cycle.name!r} runs {ranges}; the sets of a cycle "
                "share its dates: write those, or name another cycle"
            )
        elif differing:
            notes += [
                f"{_owner(other)} of cycle {cycle.name} says {other.cycle.dates}, this set "
                f"{cycle.dates}; apply the sets of a cycle with one date range"
                for other in differing
            ]
        for other in same_cycle:
            for _, kr in other.key_results():
                if self.spec.find_key_result(kr.id) is not None:
                    problems.append(
                        f"{self.spec.where(*self.spec.locate_kr(kr.id))}: KR id {kr.id!r} is already used "
                        f"by {_owner(other)} of cycle {other.cycle.name}; KR ids are unique across a "
                        "cycle's sets"
                    )
        if problems:
            raise SpecError(problems)
        alignment.resolve(others, checked=self.spec)
        return notes

    def publish(self) -> ApplyPlan:
        notes = self.check_against_other_sets()
        name = vocabulary.cycle_experiment_name(self.spec.cycle.name, self.spec.team)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None and experiment.lifecycle_stage != "active":
            raise InputError(
                f"experiment {name!r} is deleted; restore it (`mlflow experiments restore "
                f"--experiment-id {experiment.experiment_id}`) or delete it permanently first"
            )
        objective_runs: dict[str, Run] = {}
        kr_runs: dict[str, Run] = {}
        if experiment is None:
            if self.step("create", "cycle", self.spec.cycle.name, f"experiment {name}"):
                self.experiment_id = self.client.create_experiment(name, tags=RUNS_VIEW_TAGS)
        else:
            self.experiment_id = experiment.experiment_id
            objective_runs, kr_runs = _existing_runs(self.client, experiment.experiment_id)
            self._runs_view(experiment, "cycle", self.spec.cycle.name)
        ledger = self.client.get_experiment_by_name(vocabulary.LEDGER_EXPERIMENT)
        if ledger is not None and ledger.lifecycle_stage == "active":
            self._runs_view(ledger, "ledger", vocabulary.LEDGER_EXPERIMENT)
        self._objectives(objective_runs, kr_runs)
        self._retire(objective_runs, kr_runs)
        spec_tags = state.spec_tags(self.spec)
        stored_hash = experiment.tags.get(vocabulary.TAG_SPEC_HASH) if experiment is not None else None
        if experiment is not None:
            action: Action = "unchanged" if stored_hash == spec_tags[vocabulary.TAG_SPEC_HASH] else "update"
            self.step(action, "cycle", self.spec.cycle.name, "spec")
        spec_changed = stored_hash != spec_tags[vocabulary.TAG_SPEC_HASH]
        if self.experiment_id is not None and not self.dry_run and spec_changed:
            spec_tags[vocabulary.TAG_APPLIED_AT] = str(state.now_ms())
            for key, value in spec_tags.items():
                self.client.set_experiment_tag(self.experiment_id, key, value)
        if self.experiment_id is not None and not self.dry_run and spec_changed:
            # Definitions moved; state writes keep the descriptions current from here on.
            self._refresh_notes()
        return ApplyPlan(
            cycle=self.spec.cycle.name,
            team=self.spec.team,
            experiment=name,
            dry_run=self.dry_run,
            steps=self.steps,
            notes=notes,
        )

    def _runs_view(self, experiment: Any, kind: str, item_id: str) -> None:
        """Experiments made before the tag existed get it at the next apply."""
        if experiment.tags.get(mlflow_ui.EXPERIMENT_KIND_TAG) == mlflow_ui.RUNS_VIEW_KIND:
            return
        detail = f"{mlflow_ui.EXPERIMENT_KIND_TAG}: open in MLflow's runs view"
        if self.step("update", kind, item_id, detail):
            for key, value in RUNS_VIEW_TAGS.items():
                self.client.set_experiment_tag(experiment.experiment_id, key, value)

    def _refresh_notes(self) -> None:
        """The experiment and KR run descriptions for the state stored now (the spec may have changed)."""
        published = state.load_published(self.client, self.spec.cycle.name, team=self.spec.team or "")
        status = set_status(self.client, published, dt.datetime.now(dt.timezone.utc))
        mlflow_ui.refresh_ui_notes(self.client, published, status)

    def _objectives(self, objective_runs: dict[str, Run], kr_runs: dict[str, Run]) -> None:
        for objective in self.spec.objectives:
            wanted = _objective_tags(objective, self.spec.team)
            existing = objective_runs.get(objective.id)
            parent_id = existing.info.run_id if existing else "(new)"
            if existing is None:
                if self.step("create", "objective", objective.id, objective.title):
                    parent_id = self.create_run(objective.id, wanted)
            else:
                changed = _changed(existing, wanted)
                retired = existing.data.tags.get(vocabulary.TAG_RETIRED) == "true"
                action: Action = "restore" if retired else ("update" if changed else "unchanged")
                if self.step(action, "objective", objective.id, ", ".join(changed)):
                    self.set_tags(parent_id, {**wanted, vocabulary.TAG_RETIRED: "false"})
                    if retired:  # objectives carry a status tag only while retired
                        self.client.delete_tag(parent_id, vocabulary.TAG_STATUS)
            for kr in objective.key_results:
                self._key_result(kr, objective, parent_id, kr_runs.get(kr.id))

    def _key_result(self, kr: KeyResult, objective: Objective, parent_id: str, existing: Run | None) -> None:
        wanted = _kr_tags(kr, objective, parent_id)
        if existing is None:
            if self.step("create", "kr", kr.id, kr.label):
                # The description starts as the definition; refresh_ui_notes keeps it current after.
                note = mlflow_ui.kr_definition_markdown(kr, objective)
                initial = {vocabulary.TAG_STATUS: KrStatus.NOT_STARTED.value, state.MLFLOW_RUN_NOTE: note}
                self.create_run(kr.id, {**wanted, **initial})
            return
        changed = _changed(existing, wanted)
        if existing.data.tags.get(vocabulary.TAG_RETIRED) == "true":
            if self.step("restore", "kr", kr.id, ", ".join(changed)):
                restored = {**wanted, vocabulary.TAG_RETIRED: "false"}
                restored[vocabulary.TAG_STATUS] = KrStatus.NOT_STARTED.value
                self.set_tags(existing.info.run_id, restored)
            return
        if self.step("update" if changed else "unchanged", "kr", kr.id, ", ".join(changed)):
            self.set_tags(existing.info.run_id, wanted)

    def _retire(self, objective_runs: dict[str, Run], kr_runs: dict[str, Run]) -> None:
        kept_krs = {kr.id for _, kr in self.spec.key_results()}
        kept_objectives = {objective.id for objective in self.spec.objectives}
        for kind, runs, kept in (("objective", objective_runs, kept_objectives), ("kr", kr_runs, kept_krs)):
            for item_id, run in sorted(runs.items()):
                if item_id in kept or run.data.tags.get(vocabulary.TAG_RETIRED) == "true":
                    continue
                if self.step("retire", kind, item_id, "no longer in the spec; kept, not deleted"):
                    retired = {vocabulary.TAG_RETIRED: "true", vocabulary.TAG_STATUS: KrStatus.RETIRED.value}
                    self.set_tags(run.info.run_id, retired)


def apply_spec(client: MlflowClient, spec: OkrSpec, dry_run: bool = False) -> ApplyPlan:
    """Publish `spec` to its `okr/<cycle>` experiment; the same spec twice changes nothing."""
    return _Publisher(client, spec, dry_run).publish()
