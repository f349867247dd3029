"""`make bench` = `python -m bench.run`: every scenario, then docs/benchmarks.md and its charts.

    python -m bench.run                      # everything (~10 minutes on 2 cores)
    python -m bench.run --quick              # smaller sizes (a few minutes), for iterating
    python -m bench.run --only throughput    # one scenario; the others keep their last results
    python -m bench.run --report-only        # rewrite docs/benchmarks.md from the saved results

Results are kept per scenario in var/bench/results.json; the report is written from all of them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Sequence

from bench.common import FULL, QUICK, clean_work, log, machine, quiet_logs, save_result

SCENARIOS = ("throughput", "ratelimit", "efficiency", "memory", "freshness", "webhooks", "micro")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for iterating (a few minutes)")
    parser.add_argument("--only", action="append", choices=SCENARIOS, metavar="SCENARIO", help=", ".join(SCENARIOS))
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from saved results")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    quiet_logs()
    failed = []
    if not args.report_only:
        started = time.monotonic()
        save_result("machine", {**machine(), "quick": sizes.quick})
        for name in args.only or SCENARIOS:
            began = time.monotonic()
            try:
                result = importlib.import_module(f"bench.{name}").run(sizes)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            finally:
                clean_work()
            result["seconds"] = time.monotonic() - began
            result["quick"] = sizes.quick
            save_result(name, result)
            log(f"{name} done in {result['seconds']:.0f} s")
        log(f"all scenarios done in {time.monotonic() - started:.0f} s")
    from bench.report import write_report

    path = write_report()
    log(f"wrote {path}")
    if failed:
        log(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
