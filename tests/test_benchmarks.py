"""The benchmark's timing rule (benchmarks/step_time.py), on a fake clock: no real time is measured."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import step_time  # noqa: E402

WARM_UP_PAIRS = 3                        # time_pair's warm-up, max(3, steps // 2), for steps=1


class FakeClock:
    """A perf_counter that only moves when a fake step runs, by that step's cost in this round."""

    def __init__(self, costs):
        self.now, self.costs, self.calls = 0.0, costs, []

    def perf_counter(self):
        return self.now

    def step(self, name):
        def run():
            self.calls.append(name)
            timed_round = (len(self.calls) - 1) // 2 - WARM_UP_PAIRS
            self.now += self.costs[name][timed_round] if timed_round >= 0 else 1.0
        return run


def _time(monkeypatch, costs):
    clock = FakeClock(costs)
    monkeypatch.setattr(step_time.time, "perf_counter", clock.perf_counter)
    result = step_time.time_pair(clock.step("hand"), clock.step("auto"), "cpu", steps=1,
                                 blocks=len(costs["hand"]))
    return result, clock.calls[2 * WARM_UP_PAIRS:]


def test_ratio_is_the_median_of_the_rounds_ratios(monkeypatch):
    # Rounds 2 and 3 run on a machine 10x slower, for both sides alike; round 4 is a hiccup of
    # the autograd side alone. Per-round ratios: 0.8, 0.8, 0.8, 0.8, 0.4 -> median 0.8.
    costs = {"hand": [8, 8, 80, 80, 8], "auto": [10, 10, 100, 100, 20]}
    (t_hand, t_auto, ratio), _ = _time(monkeypatch, costs)
    assert ratio == 0.8
    assert (t_hand, t_auto) == (8, 20)   # per-side medians: their ratio, 0.4, would mislead


def test_rounds_alternate_which_side_runs_first(monkeypatch):
    _, timed = _time(monkeypatch, {"hand": [1] * 4, "auto": [1] * 4})
    assert timed == ["hand", "auto", "auto", "hand", "hand", "auto", "auto", "hand"]
