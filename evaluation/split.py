"""How an evaluation divides sessions into the part that trains and the part that is scored (pure).

A **time split** scores the latest share by connectionTime, so nothing the
model learns from happens after a session it is judged on. A **cross-site**
split trains on one site and scores another.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipelines.contracts.dates import parse_dates
from pipelines.data.synth import SITES


class EvaluationError(ValueError):
    """The input cannot be evaluated (too few sessions, an unknown site)."""


def split_by_time(records: Sequence[dict], eval_fraction: float) -> tuple[list, list]:
    """`(train, scored)`: the latest `eval_fraction` by connectionTime is scored (pure).

    Sessions without a parseable connectionTime sort first, into training, where
    validation quarantines them.
    """
    times = parse_dates([r.get("connectionTime") for r in records]).asi8  # NaT = int64 min
    order = np.argsort(times, kind="stable")
    cut = len(records) - round(len(records) * eval_fraction)
    return [records[i] for i in order[:cut]], [records[i] for i in order[cut:]]


def split_by_site(records: Sequence[dict], train_site: str, score_site: str,
                  ) -> tuple[list, list]:
    """`(train, scored)`: the sessions of `train_site` and of `score_site` (pure)."""
    unknown = {train_site, score_site} - set(SITES)
    if unknown or train_site == score_site:
        raise EvaluationError(f"cross-site needs two different sites of {sorted(SITES)}, "
                              f"got {train_site!r} and {score_site!r}")
    ids = SITES[train_site].site_id, SITES[score_site].site_id
    return ([r for r in records if str(r.get("siteID")) == ids[0]],
            [r for r in records if str(r.get("siteID")) == ids[1]])


def time_range(records: Sequence[dict]) -> dict[str, str | None]:
    """First and last connectionTime (ISO-8601), None when there is none."""
    times = parse_dates([r.get("connectionTime") for r in records]).dropna()
    return {"start": times.min().isoformat() if len(times) else None,
            "end": times.max().isoformat() if len(times) else None}
