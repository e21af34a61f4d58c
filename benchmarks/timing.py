"""Timing helpers shared by the CPU benchmarks: idle waits, measured pedantic rounds with a
CPU-use figure, and interleaved (paired) rounds for ratios taken within each round."""
from __future__ import annotations

import time

from idle import wait_until_idle


def quiet():
    wait_until_idle()  # pedantic's setup must return None (or (args, kwargs))


def run_measured(benchmark, fn, rounds, warmup_rounds=1):
    """benchmark.pedantic(fn) -> fn's result. Each round starts once the machine is idle (see
    idle.wait_until_idle; untimed); the process's CPU time / wall time over the timed rounds
    is kept in benchmark.extra_info["cpu_util"] (about 2.0 on an idle 2-core machine)."""
    acc = {"cpu": 0.0, "wall": 0.0, "calls": 0}

    def timed():
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        acc["calls"] += 1
        if acc["calls"] > warmup_rounds:
            acc["wall"] += time.perf_counter() - t0
            acc["cpu"] += time.process_time() - c0
        return out

    out = benchmark.pedantic(timed, setup=quiet, rounds=rounds, warmup_rounds=warmup_rounds,
                             iterations=1)
    if acc["wall"] > 0:
        benchmark.extra_info["cpu_util"] = round(acc["cpu"] / acc["wall"], 3)
    return out


def paired(benchmark, fns, rounds):
    """Interleaved measurement: every round runs each of `fns` (name -> callable) once, in an
    order that rotates from round to round, after an idle wait. pytest-benchmark times the whole
    round; the per-function times go to benchmark.extra_info["paired"] so that ratios can be
    taken within each round (robust to the machine's speed drifting between benchmarks)."""
    names = list(fns)
    times = {name: [] for name in names}
    count = [0]

    def one_round():
        k = count[0]
        count[0] += 1
        order = names[k % len(names):] + names[:k % len(names)]
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            if k > 0:  # round 0 is the warm-up
                times[name].append(time.perf_counter() - t0)

    benchmark.pedantic(one_round, setup=quiet, rounds=rounds, warmup_rounds=1, iterations=1)
    benchmark.extra_info["paired"] = times
    return times


def register_terminal_summary(request, plugin_name: str, title: str, lines) -> None:
    """Print `lines()` (when not empty) as a section `title` of pytest's terminal summary, once
    per session: for benchmark files whose tables are not conftest.py's Recipro-CAM RATIOS."""

    class _SummaryPlugin:
        @staticmethod
        def pytest_terminal_summary(terminalreporter):
            out = lines()
            if out:
                terminalreporter.section(title)
                for line in out:
                    terminalreporter.write_line(line)

    manager = request.config.pluginmanager
    if manager.get_plugin(plugin_name) is None:
        manager.register(_SummaryPlugin(), plugin_name)
