"""Waiting for a quiet machine before each timed round (the benchmark machine may be shared)."""
from __future__ import annotations

import os
import time
from typing import Optional


def _cpu_ticks():
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return sum(values), values[3] + values[4]  # total, idle + iowait


_waited = [0.0, 0]  # seconds waited in this process, rounds that started on a busy machine


def wait_until_idle(max_wait: Optional[float] = None, window: float = 0.5, idle_fraction: float = 0.85) -> float:
    """Before a timed round: wait until the machine's CPUs are idle (other processes use less
    than 15% over `window` s while we sleep), at most `max_wait` s (XAIFAST_BENCH_MAX_WAIT,
    default 20; 0 disables) per round and XAIFAST_BENCH_MAX_WAIT_TOTAL s (default 180) per
    session, so a busy machine cannot stall the run. Returns the seconds waited. No-op where
    /proc/stat is missing."""
    if max_wait is None:
        max_wait = float(os.environ.get("XAIFAST_BENCH_MAX_WAIT", "20"))
    budget = float(os.environ.get("XAIFAST_BENCH_MAX_WAIT_TOTAL", "180")) - _waited[0]
    max_wait = min(max_wait, budget)
    if max_wait <= 0 or not os.path.exists("/proc/stat"):
        return 0.0
    start = time.perf_counter()
    while True:
        t0, i0 = _cpu_ticks()
        time.sleep(window)
        t1, i1 = _cpu_ticks()
        if t1 == t0 or (i1 - i0) / (t1 - t0) >= idle_fraction:
            break
        if time.perf_counter() - start >= max_wait:
            _waited[1] += 1
            break
    waited = time.perf_counter() - start
    _waited[0] += waited
    return waited


def wait_summary() -> str:
    return (f"idle waits before timed rounds: {_waited[0]:.0f} s in all; {_waited[1]} round(s) started "
            "while other processes still used CPU")
