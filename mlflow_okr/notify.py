"""KR status notifications: one Slack-compatible message per transition, sent in the background.

A transition is claimed before it is announced: the writer logs the param
`okr.notified.<status>.<n>` on the KR run with a value unique to itself. MLflow params are
immutable, so when two writers (threads, processes, server workers) see the same transition, only
one claim succeeds and only that writer sends. `n` comes from the same snapshot of the KR run as the
previous status, and the claim is made after the new status is written, so two writers that both
saw the old status agree on `n`, and a writer that reads after the write sees no transition.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode
from mlflow.tracking import MlflowClient

from mlflow_okr import state, vocabulary
from mlflow_okr.results import KeyResultStatus
from mlflow_okr.spec import Notify

logger = logging.getLogger("mlflow_okr")

ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
ATTEMPTS = 3
TIMEOUT_SECONDS = 5.0
BACKOFF_SECONDS = 0.5
CLAIM_ATTEMPTS = 3

_senders: list[threading.Thread] = []
_senders_lock = threading.Lock()


@dataclass(frozen=True)
class Transition:
    """A KR moving into a status that `notify.transitions` asks to report."""

    kr_run_id: str
    cycle: str
    previous: str
    status: KeyResultStatus
    occurrence: int
    notify: Notify

    @property
    def claim_key(self) -> str:
        return vocabulary.notified_param(self.status.status, self.occurrence)


def resolve_webhook(webhook: str) -> str | None:
    """A webhook URL, reading `${ENV_VAR}` references from the environment (None when unset)."""
    match = ENV_REFERENCE.match(webhook)
    if match is None:
        return webhook
    value = os.environ.get(match.group(1), "").strip()
    if not value:
        logger.warning(
            "mlflow-okr notify: environment variable %s is not set; webhook skipped", match.group(1)
        )
        return None
    return value


def webhook_urls(config: Notify) -> list[str]:
    """The configured webhooks with environment references resolved; unset ones left out."""
    return [url for url in (resolve_webhook(webhook) for webhook in config.webhooks) if url]


def _occurrences(params: dict[str, str], status: str) -> int:
    """How many times the transition into `status` has been claimed on this KR run."""
    prefix = vocabulary.notified_param(status, "")
    numbers = [
        int(key[len(prefix) :]) for key in params if key.startswith(prefix) and key[len(prefix) :].isdigit()
    ]
    return max(numbers, default=0)


def pending_transition(
    client: MlflowClient, published: state.PublishedCycle, run_id: str, status: KeyResultStatus
) -> Transition | None:
    """The transition that writing `status` makes, if it is one to report; read before the write."""
    config = published.spec.notify
    if config is None or status.status not in config.transitions:
        return None
    try:
        run = client.get_run(run_id)
    except Exception:  # notifications must never fail the write that caused them
        logger.exception("mlflow-okr notify: cannot read KR run %s", run_id)
        return None
    previous = run.data.tags.get(vocabulary.TAG_STATUS, vocabulary.KrStatus.NOT_STARTED)
    if previous == status.status:
        return None
    return Transition(
        kr_run_id=run_id,
        cycle=published.cycle.name,
        previous=previous,
        status=status,
        occurrence=_occurrences(run.data.params, status.status) + 1,
        notify=config,
    )


def claim(client: MlflowClient, transition: Transition) -> bool:
    """Log the transition's claim param; True only for the one writer whose value stuck."""
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    for attempt in range(CLAIM_ATTEMPTS):
        try:
            client.log_param(transition.kr_run_id, transition.claim_key, token)
            return True
        except MlflowException as exc:
            if exc.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE):
                return False  # another writer claimed this transition first
            if attempt == CLAIM_ATTEMPTS - 1:
                logger.warning("mlflow-okr notify: cannot claim %s: %s", transition.claim_key, exc.message)
                return False
            time.sleep(BACKOFF_SECONDS * (attempt + 1))
    return False


def slack_escape(text: str) -> str:
    """User text for Slack mrkdwn: `<!channel>`, `<@user>` and `<url|label>` stay literal."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def transition_message(transition: Transition) -> str:
    """The text of the message announcing a transition (Slack mrkdwn)."""
    kr = transition.status
    parts = [
        f"*{transition.cycle}* KR `{kr.id}`"
        + (f" ({slack_escape(kr.title)})" if kr.title else "")
        + f" is now *{kr.status}* (was {transition.previous}).",
        f"Progress {kr.progress:.0%}",
    ]
    if kr.current is not None:
        detail = f"current {kr.current:.4g}"
        if kr.baseline is not None and kr.target is not None:
            detail += f" (baseline {kr.baseline:.4g} -> target {kr.target:.4g})"
        parts.append(detail)
    parts.append(f"{kr.counted_runs} counted run(s).")
    return " ".join(parts[:1]) + " " + ", ".join(parts[1:])


def announce(client: MlflowClient, transition: Transition | None) -> None:
    """Claim `transition` and, if this writer won, send it to every webhook in the background."""
    if transition is None:
        return
    try:
        if not claim(client, transition):
            return
        text = transition_message(transition)
        for url in webhook_urls(transition.notify):
            send_in_background(url, {"text": text})
    except Exception:  # notifications must never fail the write that caused them
        logger.exception("mlflow-okr notify: cannot announce the transition of KR %s", transition.status.id)


def post(url: str, payload: dict, attempts: int = ATTEMPTS, timeout: float = TIMEOUT_SECONDS) -> bool:
    """POST `payload` as JSON with retries and backoff; log failures, never raise."""
    problem = ""
    for attempt in range(attempts):
        try:
            response = requests.post(url, json=payload, timeout=timeout)
            if response.status_code < 300:
                return True
            problem = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            problem = type(exc).__name__
        if attempt < attempts - 1:
            time.sleep(BACKOFF_SECONDS * 2**attempt)
    logger.error(
        "mlflow-okr notify: webhook %s failed after %d attempts (%s)", _redacted(url), attempts, problem
    )
    return False


def _redacted(url: str) -> str:
    """The URL without its path: Slack webhook paths are secrets and must not reach the logs."""
    match = re.match(r"^(https?://[^/]+)", url)
    return (match.group(1) + "/...") if match else "(webhook)"


def send_in_background(url: str, payload: dict) -> threading.Thread:
    """Send from a non-daemon thread: the caller is not blocked, and the process exits after it."""
    thread = threading.Thread(target=post, args=(url, payload), name="mlflow-okr-notify")
    with _senders_lock:
        _senders[:] = [sender for sender in _senders if sender.is_alive()]
        _senders.append(thread)
    thread.start()
    return thread


def wait_for_pending(timeout: float | None = None) -> None:
    """Wait until every background send has finished (or `timeout` seconds have passed)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _senders_lock:
        senders = list(_senders)
    for sender in senders:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        sender.join(remaining)


def send_test_message(config: Notify, cycle: str) -> dict[str, bool]:
    """Send a test message to every configured webhook now; the result says which ones answered."""
    text = f"mlflow-okr: test message for cycle *{cycle}*. KR transitions will be reported here."
    results = {}
    for webhook in config.webhooks:
        url = resolve_webhook(webhook)
        results[webhook] = bool(url) and post(url, {"text": text})
    return results


def describe_webhook(webhook: str) -> str:
    """A webhook as it may be shown: `${VAR}` as written, a URL without its secret path."""
    return webhook if ENV_REFERENCE.match(webhook) else _redacted(webhook)
