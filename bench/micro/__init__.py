"""Micro-benchmarks of the hot paths (test_micro.py); `run` executes them for bench.run."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bench.common import WORK, Sizes, log
from bench.procs import ROOT


def run(sizes: Sizes) -> dict[str, Any]:
    from bench.micro.test_micro import BATCH

    out = WORK / "micro.json"
    WORK.mkdir(parents=True, exist_ok=True)
    log("micro-benchmarks (pytest-benchmark)")
    timing = ["--benchmark-max-time=0.3", "--benchmark-min-rounds=3"] if sizes.quick else []
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "bench/micro",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--benchmark-json={out}",
            "--benchmark-columns=mean,stddev,rounds",
            *timing,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"micro-benchmarks failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-2000:]}")
    data = json.loads(out.read_text())
    benchmarks = [
        {
            "name": bench["name"],
            "mean_us": bench["stats"]["mean"] * 1e6,
            "stddev_us": bench["stats"]["stddev"] * 1e6,
            "rounds": bench["stats"]["rounds"],
            "per_event_us": bench["stats"]["mean"] * 1e6 / BATCH,
        }
        for bench in data["benchmarks"]
    ]
    for bench in benchmarks:
        log(f"  {bench['name']}: {bench['per_event_us']:.1f} us per event")
    return {"batch": BATCH, "benchmarks": benchmarks}
