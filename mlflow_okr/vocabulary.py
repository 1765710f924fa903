"""Every name mlflow-okr writes into MLflow, and how its values are spelled: one place.

Like MLflow's `mlflow/utils/mlflow_tags.py`: the `okr.*` tag, metric and param keys, their
prefixes, the experiment names, the `okr+` URI scheme prefix, and the codecs of the values that
carry structure (a source run's verdict, a KR's saved tally, a check-in record, the id a KR goes
by in source-run tags). Renaming anything here makes stores written by earlier releases
unreadable: add, never rename.

No imports beyond the standard library: the engine (pure) and the CLI's URI check (before MLflow
is loaded) both use this module.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

# MLflow's limit on a tag value, run descriptions included (mlflow.utils.validation
# MAX_TAG_VAL_LENGTH, MLflow 3.x; not imported so that this module needs no MLflow).
MAX_TAG_VALUE_LENGTH = 8000
MS_PER_DAY = 86_400_000

# ---- The tracking URI scheme of the live store: okr+<scheme>://...
OKR_SCHEME_PREFIX = "okr+"


def has_okr_scheme(uri: str | None) -> bool:
    """True for an `okr+<scheme>:` URI; URI schemes are case-insensitive (RFC 3986), so is this."""
    return bool(uri) and uri[: len(OKR_SCHEME_PREFIX)].lower() == OKR_SCHEME_PREFIX  # type: ignore[index]


def without_okr_scheme(uri: str) -> str:
    """`okr+sqlite:///x.db` -> `sqlite:///x.db`; any other URI as it is."""
    return uri[len(OKR_SCHEME_PREFIX):] if has_okr_scheme(uri) else uri


# ---- Experiments
OKR_EXPERIMENT_PREFIX = "okr/"  # okr/<cycle>, okr/<cycle>/<team>, okr/ledger
LEDGER_EXPERIMENT = OKR_EXPERIMENT_PREFIX + "ledger"


def is_okr_experiment_name(name: str) -> bool:
    return name.startswith(OKR_EXPERIMENT_PREFIX)


def cycle_experiment_name(cycle_name: str, team: str | None = None) -> str:
    """`okr/<cycle>` for a cycle's unnamed set, `okr/<cycle>/<team>` for a team's set."""
    return OKR_EXPERIMENT_PREFIX + cycle_name + (f"/{team}" if team else "")


# ---- Keys: everything mlflow-okr writes starts with this, and writes of it never trigger hooks
KEY_PREFIX = "okr."


def is_okr_key(key: str) -> bool:
    """Keys mlflow-okr writes itself (`okr.*`)."""
    return key.startswith(KEY_PREFIX)


# Experiment tags of okr/<cycle>
TAG_SPEC = "okr.spec"  # JSON of the spec, split over okr.spec.0, okr.spec.1, ... when long
TAG_SPEC_HASH = "okr.spec.hash"
TAG_SPEC_PARTS = "okr.spec.parts"
TAG_APPLIED_AT = "okr.spec.applied_at"
TAG_CYCLE_START = "okr.cycle.start"
TAG_CYCLE_END = "okr.cycle.end"
TAG_TEAM = "okr.team"  # experiment tag of a team's set okr/<cycle>/<team>
UNSETTLED_MARKER_PREFIX = "okr.unsettled."  # okr.unsettled.<token>: a worker's unsettled work


def spec_part_tag(index: int) -> str:
    """okr.spec.0, okr.spec.1, ...: the parts of a long spec's JSON."""
    return f"{TAG_SPEC}.{index}"


# Tags of objective runs
TAG_ROLE = "okr.role"  # objective | kr
ROLE_OBJECTIVE = "objective"
ROLE_KR = "kr"
TAG_OBJECTIVE_ID = "okr.objective.id"
TAG_OBJECTIVE_TITLE = "okr.objective.title"
TAG_OBJECTIVE_CATEGORY = "okr.objective.category"
TAG_OBJECTIVE_OWNER = "okr.objective.owner"
TAG_OBJECTIVE_ALIGNS_TO = "okr.objective.aligns_to"  # comma list of objective references

# Tags and metrics of KR runs
TAG_KR_ID = "okr.kr.id"
TAG_KR_DEFINITION = "okr.kr.definition"
TAG_KR_KIND = "okr.kr.kind"
TAG_KR_METRIC = "okr.kr.metric"
TAG_KR_TITLE = "okr.kr.title"
TAG_STATUS = "okr.status"
TAG_BEST_RUN = "okr.best_run_id"
TAG_COUNTED = "okr.counted_runs"
TAG_PENDING = "okr.pending_runs"
TAG_EXCLUDED = "okr.excluded_runs"
TAG_GUARDRAIL_BREACHES = "okr.guardrail_breaches"
TAG_BASELINE = "okr.baseline"
TAG_TARGET = "okr.target"
TAG_DIRECTION = "okr.direction"
TAG_RETIRED = "okr.retired"
TAG_CHECKIN = "okr.checkin"
TAG_NOTES = "okr.notes"  # why a KR scores as it does, joined by NOTES_SEPARATOR
TAG_PROMOTIONS = "okr.promotions"  # a `model:` KR: the versions its alias pointed at, JSON
NOTES_SEPARATOR = "; "
TAG_TALLY = "okr.tally"
METRIC_VALUE = "okr.value"
METRIC_PROGRESS = "okr.progress"
METRIC_SCORE = "okr.score"
NOTIFIED_PARAM_PREFIX = "okr.notified."  # okr.notified.<status>.<occurrence>: one claim per notice


def notified_param(status: str, occurrence: int | str) -> str:
    return f"{NOTIFIED_PARAM_PREFIX}{status}.{occurrence}"


# Tags of source runs
TAG_CYCLE = "okr.cycle"
TAG_KRS = "okr.krs"  # comma list of the KR run-tag ids the run counts for
TAG_HYPOTHESIS = "okr.hypothesis"
TAG_ARM = "okr.arm"
SOURCE_TAG_PREFIX = "okr.kr."
VALUE_TAG_SUFFIX = ".value"


def run_tag_id(kr_id: str, cycle_name: str, shared: bool) -> str:
    """How source-run tags name a KR: `<id>`, or `<id>/<cycle>` when overlapping cycles share the id."""
    return f"{kr_id}/{cycle_name}" if shared else kr_id


def source_tag(tag_id: str) -> str:
    """The tag a source run carries for a KR (by its run-tag id): counted, pending or excluded: reason."""
    return SOURCE_TAG_PREFIX + tag_id


def value_tag(tag_id: str) -> str:
    """The tag holding the value a run counts for a sum or mean KR (ids have no dots)."""
    return SOURCE_TAG_PREFIX + tag_id + VALUE_TAG_SUFFIX


# Tags of ledger runs (okr/ledger)
LEDGER_TAG_PREFIX = "okr.ledger."
TAG_LEDGER_ID = "okr.ledger.id"
TAG_LEDGER_STATUS = "okr.ledger.status"
TAG_LEDGER_RESOLVED_AT = "okr.ledger.resolved_at"  # epoch milliseconds
TAG_LEDGER_KR = "okr.ledger.kr"
TAG_LEDGER_OBJECTIVE = "okr.ledger.objective"
TAG_LEDGER_METRIC = "okr.ledger.metric"
TAG_LEDGER_EXPECT = "okr.ledger.expect"
TAG_LEDGER_OWNER = "okr.ledger.owner"
TAG_LEDGER_CONTROL_RUNS = "okr.ledger.runs.control"
TAG_LEDGER_TREATMENT_RUNS = "okr.ledger.runs.treatment"
TAG_LEDGER_SUGGESTED_VERDICT = "okr.ledger.suggested_verdict"
TAG_LEDGER_P_VALUE = "okr.ledger.p_value"
TAG_LEDGER_EFFECT = "okr.ledger.effect"
TAG_LEDGER_PAIR_BY = "okr.ledger.pair_by"
TAG_LEDGER_GUARDRAILS = "okr.ledger.guardrails"
TAG_LEDGER_EVENT_COUNT = "okr.ledger.events"
TAG_LEDGER_HEAD = "okr.ledger.head"
TAG_LEDGER_VERDICT_P_VALUE = "okr.ledger.verdict_p_value"  # the p-value the suggested verdict rests on
TAG_LEDGER_EVALUATED_AT = "okr.ledger.evaluated_at"  # epoch ms of the last recorded evaluation
LEDGER_EVENT_TAG_PREFIX = "okr.ledger.event."  # okr.ledger.event.<seq>.<hash>
LEDGER_SEAL_PARAM_PREFIX = "okr.ledger.seal."  # okr.ledger.seal.<seq>
# Tag keys a user's own hypothesis tags may not take
RESERVED_TAG_PREFIXES = (KEY_PREFIX, "mlflow.")


# ---- KR statuses
class KrStatus(str, enum.Enum):
    """A KR's status; compares, prints and serializes as its value (like StrEnum, on Python 3.10 too)."""

    ACHIEVED = "achieved"
    ON_TRACK = "on-track"
    AT_RISK = "at-risk"
    OFF_TRACK = "off-track"
    NOT_STARTED = "not-started"
    MET = "met"  # after the cycle: progress >= the success grade
    MISSED = "missed"  # after the cycle: below it
    RETIRED = "retired"  # no longer in the applied spec; kept, not deleted

    __str__ = str.__str__
    __format__ = str.__format__


def read_status(text: str | None) -> KrStatus:
    """The status a KR run's okr.status tag holds; not-started when absent or hand-edited."""
    try:
        return KrStatus(text)
    except ValueError:
        return KrStatus.NOT_STARTED


# ---- A source run's verdict for a KR: `counted`, `pending` or `excluded: <reason>`
COUNTED = "counted"
PENDING = "pending"
EXCLUDED = "excluded"
EXCLUDED_PREFIX = EXCLUDED + ": "


class VerdictTag(NamedTuple):
    """A verdict tag read back: its state, its reason, and whether the text was one this writes."""

    state: str
    reason: str
    well_formed: bool


def verdict_text(state: str, reason: str = "") -> str:
    """The value of a run's `okr.kr.<id>` tag."""
    return EXCLUDED_PREFIX + reason if state == EXCLUDED else state


def read_verdict(text: str | None) -> VerdictTag | None:
    """The verdict tag `text` records; None when untagged. Unknown text reads as excluded."""
    if not text:
        return None
    if text == COUNTED:
        return VerdictTag(COUNTED, "", True)
    if text.startswith(PENDING):
        return VerdictTag(PENDING, "", True)
    if text.startswith(EXCLUDED_PREFIX):
        return VerdictTag(EXCLUDED, text[len(EXCLUDED_PREFIX):], True)
    return VerdictTag(EXCLUDED, text, False)


# ---- The KR's saved tally (okr.tally): what it was counted for, and engine.Tally.summary()
def tally_text(basis: str, summary: Mapping[str, Any]) -> str:
    """The okr.tally tag; empty when it does not fit in a tag (the next write recounts)."""
    text = json.dumps({"basis": basis, **summary}, sort_keys=True)
    return text if len(text) <= MAX_TAG_VALUE_LENGTH else ""


def read_tally(text: str | None) -> dict[str, Any] | None:
    """The saved tally as data, its `basis` included; None when absent or not JSON (hand-edited)."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


# ---- A manual KR's check-in record (okr.checkin): JSON of api.Checkin
def checkin_text(record: Mapping[str, Any]) -> str:
    return json.dumps(dict(record))


def read_checkin(text: str | None) -> dict[str, Any] | None:
    """The check-in record with `value` a float and `count` an int; None when absent or malformed."""
    if not text:
        return None
    try:
        record = json.loads(text)
        return {**record, "value": float(record["value"]), "count": int(record.get("count", 1))}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
