"""The KR definitions the live store watches, read from what `mlflow-okr apply` published."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from mlflow_okr import state, vocabulary
from mlflow_okr.cycles import current as innermost_current
from mlflow_okr.scope import RunFilter

# A KR is named by the experiment id of its published cycle and its id.
KrRef = tuple[str, str]
ALL_EXPERIMENTS = "*"  # a trace KR without `experiments` aggregates every experiment's traces


@dataclass
class WatchedKrs:
    """Published cycles and, per metric, tag and param key, the KRs a write of that key concerns."""

    cycles: dict[str, state.PublishedCycle] = field(default_factory=dict)
    metric_krs: dict[str, frozenset[KrRef]] = field(default_factory=dict)
    tag_krs: dict[str, frozenset[KrRef]] = field(default_factory=dict)
    param_krs: dict[str, frozenset[KrRef]] = field(default_factory=dict)
    okr_experiment_ids: frozenset[str] = frozenset()
    signature: tuple[tuple[str, str], ...] = ()
    # Trace KRs by the experiment whose traces they aggregate (ALL_EXPERIMENTS: every one), and
    # the ones that read assessments, which a write names by trace id only.
    trace_krs: dict[str, frozenset[KrRef]] = field(default_factory=dict)
    assessment_krs: frozenset[KrRef] = frozenset()
    windowed_krs: frozenset[KrRef] = frozenset()  # trace KRs with a `window`: they move with time
    # `model:` KRs by registered model name: an alias move re-reads them.
    model_krs: dict[str, frozenset[KrRef]] = field(default_factory=dict)
    # The `model:` metric and maintain KRs: a write to the run behind the alias re-reads them too,
    # since no run scan counts them.
    run_model_krs: frozenset[KrRef] = frozenset()

    def trace_krs_of(self, experiment_id: str | None) -> frozenset[KrRef]:
        """The trace KRs a trace or span written to `experiment_id` concerns."""
        found = self.trace_krs.get(ALL_EXPERIMENTS, frozenset())
        return found | self.trace_krs.get(str(experiment_id), frozenset()) if experiment_id else found

    def current_cycle(self, now: dt.datetime | None = None) -> state.PublishedCycle | None:
        """A set of the innermost published cycle whose dates contain `now` (`cycles.current`)."""
        now = now or dt.datetime.now(dt.timezone.utc)
        moment = int(now.timestamp() * 1000)
        containing = [c for c in self.cycles.values() if c.cycle.contains(moment)]
        current = innermost_current(containing, now, lambda published: published.cycle)
        return current[0] if current else None


def published_signature(client: MlflowClient) -> tuple[tuple[str, str], ...]:
    """One cheap query: which cycles are published, with their spec hashes and apply times.

    The apply time is the tag `apply` writes last: definitions read while an apply was still
    writing its tags carry an older (or no) apply time, so the next check reads them again.
    """
    return tuple(
        sorted(
            (
                experiment.experiment_id,
                experiment.tags.get(vocabulary.TAG_SPEC_HASH, "")
                + "@"
                + experiment.tags.get(vocabulary.TAG_APPLIED_AT, ""),
            )
            for experiment in state.list_cycle_experiments(client)
        )
    )


def _add(index: dict[str, set[KrRef]], key: str, ref: KrRef) -> None:
    if not vocabulary.is_okr_key(key):  # keys mlflow-okr writes itself never trigger hooks
        index.setdefault(key, set()).add(ref)


def load_watched_krs(client: MlflowClient) -> WatchedKrs:
    """Read every published cycle and index its metric KRs by the keys that can change them."""
    signature = published_signature(client)
    metric_krs: dict[str, set[KrRef]] = {}
    tag_krs: dict[str, set[KrRef]] = {}
    param_krs: dict[str, set[KrRef]] = {}
    cycles = {}
    trace_krs: dict[str, set[KrRef]] = {}
    assessment_krs: set[KrRef] = set()
    windowed_krs: set[KrRef] = set()
    model_krs: dict[str, set[KrRef]] = {}
    run_model_krs: set[KrRef] = set()
    experiments: list[Any] | None = None
    for spec, experiment in state.published_specs(client):
        published = state.published_set(client, spec, experiment)
        cycles[published.experiment_id] = published
        for _, kr in published.spec.key_results():
            if kr.model is not None:
                model_krs.setdefault(kr.model.name, set()).add((published.experiment_id, kr.id))
                if kr.metric is not None:
                    run_model_krs.add((published.experiment_id, kr.id))
            if kr.source == "traces":
                ref = (published.experiment_id, kr.id)
                if kr.assessment is not None:
                    assessment_krs.add(ref)
                if kr.window is not None:
                    windowed_krs.add(ref)
                if not kr.experiments:
                    trace_krs.setdefault(ALL_EXPERIMENTS, set()).add(ref)
                    continue
                experiments = experiments if experiments is not None else state.source_experiments(client)
                for experiment_id in state.match_experiments(experiments, kr.experiments):
                    trace_krs.setdefault(experiment_id, set()).add(ref)
                continue
            if kr.metric is None:
                continue
            ref = (published.experiment_id, kr.id)
            _add(metric_krs, kr.metric, ref)
            for guardrail in kr.guardrails:
                _add(metric_krs, guardrail.metric, ref)
            keys = RunFilter(kr.filter).keys()
            indexed = ((metric_krs, keys.metrics), (tag_krs, keys.tags), (param_krs, keys.params))
            for index, filter_keys in indexed:
                for key in filter_keys:
                    _add(index, key, ref)
    okr_experiments = client.search_experiments(
        view_type=ViewType.ALL, filter_string=f"name LIKE '{vocabulary.OKR_EXPERIMENT_PREFIX}%'"
    )
    return WatchedKrs(
        cycles=cycles,
        metric_krs={key: frozenset(refs) for key, refs in metric_krs.items()},
        tag_krs={key: frozenset(refs) for key, refs in tag_krs.items()},
        param_krs={key: frozenset(refs) for key, refs in param_krs.items()},
        okr_experiment_ids=frozenset(e.experiment_id for e in okr_experiments),
        signature=signature,
        trace_krs={key: frozenset(refs) for key, refs in trace_krs.items()},
        assessment_krs=frozenset(assessment_krs),
        windowed_krs=frozenset(windowed_krs),
        model_krs={name: frozenset(refs) for name, refs in model_krs.items()},
        run_model_krs=frozenset(run_model_krs),
    )
