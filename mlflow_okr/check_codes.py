"""The OKR checks' codes: what each trap is called and whether it is about an objective or a KR.

okrs.yaml names these codes in `allow: [...]` (spec.py) and `checks.py` reports them; both read
this one list, so a code cannot be allowed that no check reports.
"""

from __future__ import annotations

from typing import Literal

CheckCode = Literal[
    "okr-bau",
    "okr-no-business-proxy",
    "okr-implausible-target",
    "okr-research-without-learning",
    "okr-too-many-krs",
    "okr-no-owner",
]
# The traps about one KR; an `allow` on a KR may only name these (the others are about objectives).
KR_CHECK_CODES: frozenset[str] = frozenset({"okr-implausible-target"})
# What a KR measures: a business or product outcome, a model metric, or (ledger KRs) learning.
Measure = Literal["business", "product", "model"]
MAX_KEY_RESULTS = 5  # more KRs than anyone follows (okr-too-many-krs)
