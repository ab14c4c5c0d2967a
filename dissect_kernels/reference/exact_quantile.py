"""Oracle for the exact-quantile state machine (csrc/include/dissect_kernels/exact_quantile.h):
its sizing, compaction-target, merge and readout rules written out in Python, as the first
Python QuantileSketch computed them. Tests compare the C++ core with these on random inputs."""
from __future__ import annotations

import math

MIN_SLACK = 1024


def virtual_index(n: int, q: float) -> float:
    """numpy.quantile(method="linear")'s position (n - 1) * q, in float64."""
    return float(n - 1) * float(q)


def tail_needed(n: int, q: float) -> int:
    """How many of the largest of n values the linear quantile at q (and above) reads, + 1 margin."""
    return min(n, n - math.floor(virtual_index(n, q)) + 1)


def capacity_for(n: int, min_quantile: float, slack: int | None) -> int:
    """Buffer slots: the tail of n values plus the slack (default max(tail, MIN_SLACK))."""
    target = tail_needed(n, min_quantile)
    return target + (max(target, MIN_SLACK) if slack is None else slack)


def compaction_target(expected: int, min_quantile: float, count_after: int, capacity: int) -> int:
    """The tail of max(expected, count_after) values, capped so a quarter of the slack stays free."""
    slack = capacity - tail_needed(expected, min_quantile)
    want = tail_needed(max(expected, count_after), min_quantile)
    return max(1, min(want, capacity - max(1, slack // 4)))


def merge_plan(expected_a: int, count_a: int, cap_a: int, expected_b: int, count_b: int, cap_b: int,
               min_quantile: float, slack: int | None) -> dict:
    """Expected count, capacity, target and count of the union of two states."""
    count = count_a + count_b
    expected = max(expected_a, expected_b, count)
    cap = max(cap_a, cap_b, capacity_for(expected, min_quantile, slack))
    return dict(expected_count=expected, capacity=cap, target=compaction_target(expected, min_quantile, count, cap),
                count=count)


def readout(n: int, q: float) -> tuple[int, int, float]:
    """Descending ranks of the two order statistics numpy interpolates between, and the weight."""
    vi = virtual_index(n, q)
    prev = nxt = n - 1
    if vi < n - 1:
        prev = math.floor(vi)
        nxt = prev + 1
    return n - 1 - prev, n - 1 - nxt, vi - prev


def lerp(lower: float, upper: float, gamma: float) -> float:
    """numpy's _lerp."""
    diff = upper - lower
    return upper - diff * (1 - gamma) if gamma >= 0.5 else lower + diff * gamma
