"""Which hypotheses a cycle tested, and their Benjamini-Hochberg q-values across that cycle.

A cycle that tests a dozen hypotheses at p < 0.05 expects some false "validated" ones. The
q-value of a hypothesis is the smallest false discovery rate at which it would still count as a
discovery among the cycle's evaluated hypotheses (Benjamini and Hochberg 1995, "Controlling the
false discovery rate", JRSS B 57(1); q-values as adjusted p-values: Storey 2002, JRSS B 64(3)).
Pure functions: the ledger, the report and the ledger KRs' count in `state` all call these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

ALPHA = 0.05  # the ledger's level: `ledger evaluate` reports 1 - ALPHA = 95% intervals


def significant(q_value: float) -> bool:
    """Whether a hypothesis with this q-value counts as a discovery at the ledger's level."""
    return q_value <= ALPHA


def doubtful(status: str, q_value: float | None) -> bool:
    """Validated, yet its q-value is above ALPHA: among its cycle's tests, maybe a false discovery."""
    return status == "validated" and q_value is not None and not significant(q_value)


def cycle_moment(resolved_at: int | None, evaluated_at: int | None, created_at: int) -> int:
    """When a hypothesis counts for a cycle: its resolution, else its last evaluation, else its creation."""
    return resolved_at or evaluated_at or created_at


def q_values(p_values: Mapping[str, float]) -> dict[str, float]:
    """Benjamini-Hochberg adjusted p-values (q-values) of a family, by hypothesis id."""
    if not p_values:
        return {}
    from statsmodels.stats.multitest import multipletests

    ids = sorted(p_values)  # a fixed order: the same q-values whatever order the ledger lists them
    _, adjusted, _, _ = multipletests([p_values[i] for i in ids], alpha=ALPHA, method="fdr_bh")
    return {hypothesis_id: float(q) for hypothesis_id, q in zip(ids, adjusted, strict=True)}


def family(rows: Iterable[tuple[str, int, float | None]], contains) -> dict[str, float]:
    """The p-values of the hypotheses, given as (id, moment ms, p-value), whose moment `contains` accepts."""
    return {hypothesis_id: p for hypothesis_id, moment, p in rows if p is not None and contains(moment)}


def number(text: str | None) -> float | None:
    """A number from a tag value; None when it is missing or not a number (a hand-edited tag)."""
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
