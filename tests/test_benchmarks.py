"""The benchmark's timing rule (benchmarks/step_time.py), on a fake clock: no real time is measured."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import step_time  # noqa: E402

WARM_UP_ROUNDS = 3                       # time_group's warm-up, max(3, steps // 2), for steps=1


class FakeClock:
    """A perf_counter that only moves when a fake step runs, by that step's cost in this round."""

    def __init__(self, costs):
        self.now, self.costs, self.calls = 0.0, costs, []

    def perf_counter(self):
        return self.now

    def step(self, name):
        def run():
            self.calls.append(name)
            timed_round = (len(self.calls) - 1) // len(self.costs) - WARM_UP_ROUNDS
            self.now += self.costs[name][timed_round] if timed_round >= 0 else 1.0
        return run


def _time(monkeypatch, costs):
    clock = FakeClock(costs)
    monkeypatch.setattr(step_time.time, "perf_counter", clock.perf_counter)
    timing = step_time.time_group({name: clock.step(name) for name in costs}, "cpu", steps=1,
                                  blocks=len(next(iter(costs.values()))))
    return timing, clock.calls[len(costs) * WARM_UP_ROUNDS:]


def test_ratio_is_the_median_of_the_rounds_ratios(monkeypatch):
    # Rounds 2 and 3 run on a machine 10x slower, for every side alike; round 4 is a hiccup of the
    # eager side alone. Per-round ratios fast/eager: 0.8, 0.8, 0.8, 0.8, 0.4 -> median 0.8.
    costs = {"fast": [8, 8, 80, 80, 8], "eager": [10, 10, 100, 100, 20], "reference": [12, 12, 120, 120, 12]}
    timing, _ = _time(monkeypatch, costs)
    assert step_time.ratio(timing, "fast", "eager") == 0.8
    assert step_time.ratio(timing, "reference", "fast") == 1.5
    assert timing["median"] == {"fast": 8, "eager": 20, "reference": 12}   # per-side medians: 8/20 misleads


def test_the_order_rotates_from_round_to_round(monkeypatch):
    _, timed = _time(monkeypatch, {"a": [1] * 4, "b": [1] * 4, "c": [1] * 4})
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]


def test_spread_is_the_range_of_the_rounds_ratios(monkeypatch):
    # Per-round ratios fast/eager: 0.8, 0.5, 0.9 -> median 0.8, spread 0.5 to 0.9, printed as such.
    costs = {"fast": [8, 5, 9], "eager": [10, 10, 10]}
    timing, _ = _time(monkeypatch, costs)
    assert step_time.spread(timing, "fast", "eager") == [0.5, 0.9]
    row = {"fast/eager": step_time.ratio(timing, "fast", "eager"),
           "spread": {"fast/eager": step_time.spread(timing, "fast", "eager")}}
    assert step_time.with_spread(row, "fast/eager") == "0.80 (0.50-0.90)"


def test_every_ratio_of_a_row_has_its_spread(monkeypatch):
    costs = {side: [1.0, 2.0, 3.0] for side in ("reference", "fast", "eager")}
    clock = FakeClock(costs)
    monkeypatch.setattr(step_time.time, "perf_counter", clock.perf_counter)
    monkeypatch.setitem(step_time.MODELS, "fake", lambda batch, device, compiled: {
        side: clock.step(side) for side in costs})
    row = step_time.model_row("fake", 8, "cpu", steps=1, blocks=3, compiled=False)
    ratios = [column for column in row if "/" in column]
    assert ratios and set(row["spread"]) == set(ratios)
    assert all(low <= row[column] <= high for column, (low, high) in row["spread"].items())
