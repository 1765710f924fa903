"""The Python API of the practice commands: OKR checks, effort and the weekly review.

Like `api.py`, a facade at the edge: these take a tracking URI, the modules they call take a
client (`checks`, `effort`, `review`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from mlflow_okr import state
from mlflow_okr.checks import CheckReport, check_spec
from mlflow_okr.results import CycleStatus
from mlflow_okr.review import Review, build_review, parse_since, post_review
from mlflow_okr.spec import OkrSpec, load_spec
from mlflow_okr.sync import stored_cycle_status


def check_okrs(
    spec: OkrSpec | str | Path,
    tracking_uri: str | None = None,
    track_record: bool = True,
    now: dt.datetime | None = None,
) -> CheckReport:
    """The OKR checks of a spec (or okrs.yaml path); with `track_record`, targets are checked
    against the earlier cycles and the ledger in the backend at `tracking_uri`."""
    spec = spec if isinstance(spec, OkrSpec) else load_spec(spec)
    client = state.make_client(tracking_uri) if track_record else None
    return check_spec(spec, client, now)


def annotated_status(
    tracking_uri: str | None = None,
    cycle: str | None = None,
    now: dt.datetime | None = None,
    team: str | None = None,
    effort: bool = False,
) -> CycleStatus:
    """`status` with each metric KR's `confidence`; with `effort`, also the effort of each KR,
    objective, owner and team, and the cycle's runs that count for no KR (`unaligned`)."""
    from mlflow_okr.confidence import with_confidence
    from mlflow_okr.effort import with_effort

    client = state.make_client(tracking_uri)
    now = now or dt.datetime.now(dt.timezone.utc)
    status = with_confidence(client, stored_cycle_status(client, cycle=cycle, now=now, team=team), now)
    return with_effort(client, status, now) if effort else status


def effort_status(
    tracking_uri: str | None = None,
    cycle: str | None = None,
    now: dt.datetime | None = None,
    team: str | None = None,
) -> CycleStatus:
    """`status` with confidence and effort: `annotated_status(..., effort=True)`."""
    return annotated_status(tracking_uri, cycle, now, team, effort=True)


def weekly_review(
    since: str = "7d",
    tracking_uri: str | None = None,
    cycle: str | None = None,
    team: str | None = None,
    now: dt.datetime | None = None,
    ui_url: str | None = None,
) -> Review:
    """What moved in the current cycle (or `cycle`) since `since` (`7d`, `2w` or a date), up to `now`."""
    from mlflow_okr.confidence import with_confidence

    client = state.make_client(tracking_uri)
    until = now or dt.datetime.now(dt.timezone.utc)
    status = with_confidence(client, stored_cycle_status(client, cycle=cycle, now=until, team=team), until)
    confidences = {kr.id: kr.confidence for kr in status.key_results() if kr.confidence is not None}
    return build_review(client, status, parse_since(since, until), until, ui_url, confidences)


def post_weekly_review(
    review: Review, tracking_uri: str | None = None, team: str | None = None
) -> dict[str, bool]:
    """Post `review` to the webhooks of its cycle's sets (`notify.webhooks` in okrs.yaml)."""
    return post_review(state.make_client(tracking_uri), review, team)
