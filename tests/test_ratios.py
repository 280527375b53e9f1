"""The one hit-ratio formula (challengectl/ratios.py) behind the cache, Redis and PostgreSQL hit figures."""

from __future__ import annotations

from challengectl.ratios import hit_pct, hit_ratio


def test_hit_ratio_is_hits_over_lookups() -> None:
    assert hit_ratio(3, 1) == 0.75
    assert hit_pct(2, 1) == 66.67
    assert hit_pct(2, 1, 1) == 66.7
    assert hit_ratio(None, 4) == 0.0


def test_no_lookup_has_no_ratio() -> None:
    assert hit_ratio(0, 0) is None and hit_pct(None, None) is None
    # A counter reset between two samples makes the deltas negative: no ratio rather than a wrong one.
    assert hit_pct(-5, -1) is None
