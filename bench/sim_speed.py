"""How fast the deterministic simulation runs: schedules per second, against a schedule with no steps
(just the dataset, the workers' managers, the drain and the finalizer) as the baseline cost.

    python bench/sim_speed.py [--schedules N]
"""

from __future__ import annotations

import argparse
import time

from shardclaim.testing.sim import run_schedule


def rate(count: int, **options: int) -> float:
    started = time.perf_counter()
    for seed in range(count):
        run_schedule(seed, **options)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schedules", type=int, default=500)
    args = parser.parse_args()
    base = rate(args.schedules, steps=0)
    full = rate(args.schedules)
    print(f"schedules of 0 steps (setup, drain, finalizer): {base:.0f}/s")
    print(f"schedules of 80 steps with faults (the suite's): {full:.0f}/s ({base / full:.1f}x the empty one)")


if __name__ == "__main__":
    main()
