"""The run context provider: `okr.cycle`, `okr.hypothesis` and `okr.arm` on new runs.

Only in OKR context (MLFLOW_OKR_HYPOTHESIS set, or an `okr+` tracking URI with a published
cycle): installing mlflow-okr changes nothing, and queries nothing, for anyone else.
"""

from __future__ import annotations

import os

from mlflow_okr import state, vocabulary
from mlflow_okr.store.live import fail_open

HYPOTHESIS_ENV = "MLFLOW_OKR_HYPOTHESIS"
ARM_ENV = "MLFLOW_OKR_ARM"


def _current_cycle_name() -> str | None:
    from mlflow import get_tracking_uri

    from mlflow_okr.compat import current_tracking_store
    from mlflow_okr.store.definitions import load_watched_krs
    from mlflow_okr.store.hooks import OkrHooks

    if vocabulary.has_okr_scheme(get_tracking_uri()):
        store = current_tracking_store()
        if isinstance(store, OkrHooks):
            current = store._okr_live.watched.current_cycle()
            return current.cycle.name if current else None
    current = load_watched_krs(state.make_client()).current_cycle()
    return current.cycle.name if current else None


def in_okr_context() -> bool:
    """True only with a hypothesis in the environment or an okr+ URI with a published cycle."""
    from mlflow import get_tracking_uri

    if os.environ.get(HYPOTHESIS_ENV):
        return True
    if not vocabulary.has_okr_scheme(get_tracking_uri()):
        return False
    try:
        return _current_cycle_name() is not None
    except Exception as error:  # noqa: BLE001 - fail-open: never block start_run
        fail_open(error)
        return False


def okr_context_tags() -> dict[str, str]:
    """The okr.* tags a new run gets in OKR context."""
    tags = {}
    hypothesis = os.environ.get(HYPOTHESIS_ENV)
    if hypothesis:
        tags[vocabulary.TAG_HYPOTHESIS] = hypothesis
        arm = os.environ.get(ARM_ENV)
        if arm:
            tags[vocabulary.TAG_ARM] = arm
    try:
        cycle = _current_cycle_name()
    except Exception as error:  # noqa: BLE001 - fail-open
        fail_open(error)
        cycle = None
    if cycle:
        tags[vocabulary.TAG_CYCLE] = cycle
    return tags
