"""okrs.yaml texts for tests, built from a few arguments instead of copied inline.

    SPEC = okrs_yaml(
        reco("{id: ctr, metric: online_ctr, baseline: 0.05, target: 0.08}"),
        ops("{id: latency, metric: p99, baseline: 100, target: 50}", ON_CALL),
    )

A KR is one YAML flow mapping, written as okrs.yaml would write it on one line; the test shows
the KRs it is about, the builder writes the rest. The layout is fixed, so the line numbers in
validation messages are known: `version` on line 1, `cycle` 2, `objectives` 3, the first
objective's `- id:` on line 4, then `title`, `category`, `owner` (when given), `allow` (when
given), `key_results`, and one line per KR. The text ends with a newline, so top-level keys
(`notify: ...`) can be appended.
"""

from __future__ import annotations

ON_CALL = "{id: on-call, source: manual, target: 1}"


def objective(
    objective_id: str,
    *key_results: str,
    title: str,
    category: str = "product",
    owner: str | None = None,
    allow: list[str] | None = None,
) -> str:
    """One objective's YAML lines (indented for `objectives:`), its KRs given as flow mappings."""
    lines = [f"  - id: {objective_id}", f"    title: {title}", f"    category: {category}"]
    if owner is not None:
        lines.append(f"    owner: {owner}")
    if allow:
        lines.append(f"    allow: [{', '.join(allow)}]")
    lines.append("    key_results:")
    lines += [f"      - {kr}" for kr in key_results]
    return "\n".join(lines) + "\n"


def reco(*key_results: str) -> str:
    """The product objective `reco` ("Better recommendations"), owned by reco-team."""
    return objective("reco", *key_results, title="Better recommendations", owner="reco-team")


def ops(*key_results: str) -> str:
    """The operational objective `ops` ("Fast serving"), owned by platform."""
    return objective("ops", *key_results, title="Fast serving", category="operational", owner="platform")


def okrs_yaml(*objectives: str, cycle: str = "2026-Q4") -> str:
    """A whole okrs.yaml: version 1, `cycle`, and the objectives (from `objective`, `reco`, `ops`)."""
    return f"version: 1\ncycle: {cycle}\nobjectives:\n" + "".join(objectives)


def one_kr(lines: str) -> str:
    """An okrs.yaml whose one objective `o` holds one KR `k` written in block style, for tests that
    name the line of each key: `- id: k` is line 8 and `lines` (each indented eight spaces, as
    under `- id: k`) start on line 9."""
    return okrs_yaml(objective("o", "id: k\n" + lines.rstrip("\n"), title="O"))
