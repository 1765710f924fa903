"""The vocabulary: every `okr.*` key and the `okr+` scheme spelled once, and the codecs round-trip."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

import mlflow_okr
from mlflow_okr import vocabulary
from mlflow_okr.vocabulary import KrStatus

PACKAGE = Path(mlflow_okr.__file__).parent
VOCABULARY = PACKAGE / "vocabulary.py"
# A key (`okr.status`), a prefix (`okr.kr.`) or the URI scheme (`okr+sqlite`), anywhere in a literal
SPELLED_KEY = re.compile(r"(?<![\w/-])okr[.+](?=[\w{]|$)")


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes: prose may mention a key; code may not spell one."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _spelled_keys(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = _docstrings(tree)
    return [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and SPELLED_KEY.search(node.value)
    ]


def test_every_okr_key_is_spelled_only_in_the_vocabulary():
    spelled = [
        place
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != VOCABULARY
        for place in _spelled_keys(path)
    ]
    assert spelled == []


def test_the_vocabulary_itself_is_seen_by_the_check():
    assert any("'okr.status'" in place for place in _spelled_keys(VOCABULARY))


def test_the_tag_limit_is_mlflows():
    assert vocabulary.MAX_TAG_VALUE_LENGTH == MAX_TAG_VAL_LENGTH


@pytest.mark.parametrize(
    "uri, okr, inner",
    [
        ("okr+sqlite:///x.db", True, "sqlite:///x.db"),
        ("OKR+postgresql://h/db", True, "postgresql://h/db"),
        ("sqlite:///x.db", False, "sqlite:///x.db"),
        ("", False, ""),
    ],
)
def test_the_okr_scheme_is_case_insensitive(uri, okr, inner):
    assert vocabulary.has_okr_scheme(uri) is okr
    assert vocabulary.without_okr_scheme(uri) == inner


def test_a_status_is_its_value_in_json_and_text():
    assert json.dumps({"status": KrStatus.ON_TRACK}) == '{"status": "on-track"}'
    assert f"{KrStatus.AT_RISK}" == str(KrStatus.AT_RISK) == "at-risk"
    assert KrStatus("retired") is KrStatus.RETIRED and KrStatus.MET == "met"


@pytest.mark.parametrize(
    "text, read",
    [
        ("counted", ("counted", "", True)),
        ("pending", ("pending", "", True)),
        ("excluded: run FAILED", ("excluded", "run FAILED", True)),
        ("hand-edited", ("excluded", "hand-edited", False)),
    ],
)
def test_verdict_tags_read_back(text, read):
    assert tuple(vocabulary.read_verdict(text)) == read
    if read[2]:
        assert vocabulary.verdict_text(read[0], read[1]) == text
    assert vocabulary.read_verdict("") is None


def test_check_in_records_read_back_and_hand_edits_read_as_none():
    text = vocabulary.checkin_text({"kr": "up", "value": 1, "who": "ana", "count": 2})
    assert vocabulary.read_checkin(text) == {"kr": "up", "value": 1.0, "who": "ana", "count": 2}
    assert vocabulary.read_checkin(json.dumps({"value": 3}))["count"] == 1
    for edited in ("not json", "[1]", '{"value": "x"}', '{"who": "ana"}', None):
        assert vocabulary.read_checkin(edited) is None


def test_a_tally_too_long_for_a_tag_is_not_saved():
    assert vocabulary.read_tally(vocabulary.tally_text("abc", {"n": 1})) == {"basis": "abc", "n": 1}
    assert vocabulary.tally_text("abc", {"runs": "x" * vocabulary.MAX_TAG_VALUE_LENGTH}) == ""
    assert vocabulary.read_tally("[1]") is None


def test_run_tag_ids_name_the_cycle_only_when_shared():
    assert vocabulary.run_tag_id("ctr", "2026-Q4", shared=False) == "ctr"
    assert vocabulary.source_tag(vocabulary.run_tag_id("ctr", "2026-Q4", shared=True)) == "okr.kr.ctr/2026-Q4"
    assert vocabulary.value_tag("ctr") == "okr.kr.ctr.value"


def test_a_stored_status_reads_back_and_a_hand_edited_one_reads_as_not_started():
    assert vocabulary.read_status("at-risk") is KrStatus.AT_RISK
    assert vocabulary.read_status("retired") is KrStatus.RETIRED
    assert vocabulary.read_status("great") is KrStatus.NOT_STARTED
    assert vocabulary.read_status(None) is KrStatus.NOT_STARTED


def test_every_transition_a_webhook_can_name_is_a_status():
    from mlflow_okr.spec import TRANSITIONS

    assert {KrStatus(name) for name in TRANSITIONS} <= set(KrStatus)
