"""Measure what the trial host saves: per-worker preparation against per-trial start-up.

Runs the QUAERO example's trials through a trial host, which imports and resolves the config
once and forks one child per trial. Then runs the same number of trials each in a fresh Python
process, which is what a worker without a fork server would pay per trial. No database is used.

Run from the repository root after `make model`:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trial_overhead.py [--trials 4]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hpc.trial_host import TrialHost
from tuner.config import load_config
from tuner.objectives import ObjectiveSpec, TrialRequest

CONFIG = Path("examples/quaero/config.yml")
FRESH_PROCESS_CODE = """
import sys, time
started = time.monotonic()
from pathlib import Path
from tuner.config import load_config
from tuner.objectives import EdsnlpObjective, TrialRequest
loaded = load_config(Path(sys.argv[1]))
objective = EdsnlpObjective(loaded.path, loaded.tuning)
request = TrialRequest(number=int(sys.argv[2]), values={}, seed=42, trial_dir=sys.argv[3])
objective.run(request, lambda step, value: None)
print(time.monotonic() - started)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="trials per mode")
    args = parser.parse_args()
    loaded = load_config(CONFIG)
    spec = ObjectiveSpec(kind="edsnlp", config_path=loaded.path, tuning=loaded.tuning)

    with tempfile.TemporaryDirectory() as scratch:
        host = TrialHost(spec)
        started = time.monotonic()
        host.start()
        prepare_s = time.monotonic() - started
        forked = []
        for number in range(args.trials):
            request = TrialRequest(number, {}, 42, f"{scratch}/forked-{number}")
            started = time.monotonic()
            outcome = host.run(request, lambda step, value: False)
            forked.append(time.monotonic() - started)
            if outcome.state != "complete":
                sys.exit(f"trial {number} in the host ended as {outcome.state}: {outcome.error}")
        host.close()

        fresh = []
        for number in range(args.trials):
            started = time.monotonic()
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    FRESH_PROCESS_CODE,
                    str(CONFIG),
                    str(number),
                    f"{scratch}/fresh-{number}",
                ],
                check=True,
                capture_output=True,
            )
            fresh.append(time.monotonic() - started)

    print(f"trial host preparation (once per worker): {prepare_s:.1f} s")
    print(f"trial in a forked child: median {statistics.median(forked):.2f} s, all {_list(forked)}")
    print(f"trial in a fresh process: median {statistics.median(fresh):.2f} s, all {_list(fresh)}")
    saved = statistics.median(fresh) - statistics.median(forked)
    print(f"saved per trial: {saved:.2f} s")
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trial_overhead.py"
    print(f"rerun: {command} --trials {args.trials}")


def _list(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


if __name__ == "__main__":
    main()
