"""Alignment: objectives that serve objectives of other sets, and the scores that roll up to them.

An objective's `aligns_to` names parents in another set of the same cycle or of an enclosing cycle
(a quarterly team objective serving an annual company one), as `[<cycle>:][<team>/]<objective id>`.
A parent's score is the weighted mean of its own KRs' progress (KR `weight`) and its aligned
children's scores (child `alignment_weight`). Scores roll up when read, from every set's stored
KR state, so a team lead's writes never need rights on the company's runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from mlflow_okr.cycles import encloses
from mlflow_okr.engine import weighted_mean
from mlflow_okr.errors import SpecError
from mlflow_okr.spec import Objective, OkrSpec

REFERENCE = re.compile(r"^(?:(?P<cycle>[^:/]+):)?(?:(?P<team>[^:/]+)/)?(?P<id>[^:/]+)$")


@dataclass(frozen=True)
class ObjectiveKey:
    """An objective, named across sets: its cycle, its set's team (None: unnamed set) and its id."""

    cycle: str
    team: str | None
    id: str

    @property
    def ref(self) -> str:
        """The canonical reference, in the form `aligns_to` accepts: `<cycle>:[<team>/]<id>`."""
        return f"{self.cycle}:" + (f"{self.team}/" if self.team else "") + self.id


def objective_key(spec: OkrSpec, objective: Objective) -> ObjectiveKey:
    return ObjectiveKey(spec.cycle.name, spec.team, objective.id)


@dataclass
class Alignment:
    """Resolved `aligns_to` links between the objectives of several sets."""

    parents: dict[ObjectiveKey, list[ObjectiveKey]] = field(default_factory=dict)
    children: dict[ObjectiveKey, list[tuple[ObjectiveKey, float]]] = field(default_factory=dict)
    unresolved: dict[ObjectiveKey, list[str]] = field(default_factory=dict)

    def link(self, child: ObjectiveKey, parent: ObjectiveKey, weight: float) -> None:
        self.parents.setdefault(child, []).append(parent)
        self.children.setdefault(parent, []).append((child, weight))


def _candidates(specs: list[OkrSpec], child_spec: OkrSpec, reference: str) -> list[ObjectiveKey]:
    match = REFERENCE.match(reference)
    if match is None:
        return []
    found = []
    for spec in specs:
        if (spec.cycle.name, spec.team) == (child_spec.cycle.name, child_spec.team):
            continue  # a set does not align to itself
        if not encloses(spec.cycle, child_spec.cycle):
            continue
        if match["cycle"] and spec.cycle.name != match["cycle"]:
            continue
        if match["team"] and spec.team != match["team"]:
            continue
        found.extend(objective_key(spec, o) for o in spec.objectives if o.id == match["id"])
    return found


def resolve(specs: Iterable[OkrSpec], checked: OkrSpec | None = None) -> Alignment:
    """Resolve every set's `aligns_to`; for the `checked` set (being applied), a reference that
    names no parent, names several, or closes a loop raises SpecError with file and line.

    Other sets' references that no longer resolve (a parent since retired) are kept in
    `unresolved` and count for nothing.
    """
    specs = list(specs)
    if checked is not None:
        specs = [s for s in specs if (s.cycle.name, s.team) != (checked.cycle.name, checked.team)]
        specs.append(checked)
    alignment = Alignment()
    problems = []
    for spec in specs:
        for o_index, objective in enumerate(spec.objectives):
            child = objective_key(spec, objective)
            for r_index, reference in enumerate(objective.aligns_to):
                found = _candidates(specs, spec, reference)
                if len(found) == 1:
                    alignment.link(child, found[0], objective.alignment_weight)
                    continue
                alignment.unresolved.setdefault(child, []).append(reference)
                if spec is not checked:
                    continue
                where = spec.where("objectives", o_index, "aligns_to", r_index)
                if not found:
                    problems.append(
                        f"{where}: aligns_to {reference!r} names no objective of another set of "
                        f"cycle {spec.cycle.name} or of a cycle that encloses it; "
                        "publish the parent's set first"
                    )
                else:
                    options = ", ".join(key.ref for key in found)
                    problems.append(f"{where}: aligns_to {reference!r} is ambiguous; write one of {options}")
    if checked is not None:
        problems += _loops(alignment, checked)
    if problems:
        raise SpecError(problems)
    return alignment


def _loops(alignment: Alignment, checked: OkrSpec) -> list[str]:
    """A loop through an objective of the `checked` set, as an error naming where it starts."""
    problems = []
    for o_index, objective in enumerate(checked.objectives):
        start = objective_key(checked, objective)
        path = _path_back(alignment, start)
        if path:
            names = " -> ".join(key.ref for key in [start, *path])
            where = checked.where("objectives", o_index, "aligns_to")
            problems.append(f"{where}: alignment loop {names}; an objective cannot serve itself")
    return problems


def _path_back(alignment: Alignment, start: ObjectiveKey) -> list[ObjectiveKey]:
    """A chain of parents from `start` that comes back to it; empty when there is none."""
    stack = [(parent, [parent]) for parent in alignment.parents.get(start, [])]
    seen = set()
    while stack:
        key, path = stack.pop()
        if key == start:
            return path
        if key in seen:
            continue
        seen.add(key)
        stack.extend((parent, [*path, parent]) for parent in alignment.parents.get(key, []))
    return []


def roll_up(
    own: dict[ObjectiveKey, list[tuple[float, float]]], alignment: Alignment
) -> dict[ObjectiveKey, float]:
    """Each objective's score: the weighted mean of its own KRs' (progress, weight) pairs and its
    aligned children's (score, alignment_weight) pairs. Children without a known score (a set not
    read) do not count; loops were refused at apply, and a stored one counts each objective once.
    """
    scores: dict[ObjectiveKey, float] = {}
    visiting: set[ObjectiveKey] = set()

    def score(key: ObjectiveKey) -> float:
        if key in scores:
            return scores[key]
        visiting.add(key)
        pairs = list(own.get(key, []))
        for child, weight in alignment.children.get(key, []):
            if child in own and child not in visiting:
                pairs.append((score(child), weight))
        visiting.discard(key)
        scores[key] = weighted_mean(pairs)
        return scores[key]

    for key in own:
        score(key)
    return scores
