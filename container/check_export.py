"""Run inside the image by `make container-test`, after `duvo-exporter once`: checks what it left.

    python check_export.py SIMULATOR_URL STATE_DIR

- it runs as uid/gid 10001, the image's user;
- the state file is on the volume, owned by that user, mode 0600;
- the file sink holds every Job the simulator has, each once, with its final status. The
  simulator runs with no new Jobs and lifecycles so short that every Job has finished before the
  exporter starts, so "every finished Job" is exactly "every Job".

Exits non-zero with one line per problem. Standard library only: it runs in the runtime image.
"""

from __future__ import annotations

import collections
import json
import os
import stat
import sys
import urllib.request

TERMINAL = {"completed", "failed", "stopped", "interrupted"}


def main() -> int:
    sim_url, state_dir = sys.argv[1], sys.argv[2]
    problems: list[str] = []

    if (os.getuid(), os.getgid()) != (10001, 10001):
        problems.append(f"runs as uid {os.getuid()} gid {os.getgid()}, not 10001:10001")

    state = os.path.join(state_dir, "state.db")
    try:
        st = os.stat(state)
        if st.st_uid != 10001 or stat.S_IMODE(st.st_mode) != 0o600 or st.st_size == 0:
            problems.append(f"{state}: uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}, {st.st_size} B")
    except OSError as exc:
        problems.append(f"no state file on the volume: {exc}")

    with urllib.request.urlopen(f"{sim_url}/_sim/jobs", timeout=10) as reply:
        jobs = {job["id"]: job for job in json.load(reply)["jobs"]}
    still_open = [job_id for job_id, job in jobs.items() if job["status"] not in TERMINAL]
    if not jobs or still_open:
        problems.append(f"the simulator should hold only finished Jobs: {len(jobs)} Jobs, {len(still_open)} open")

    events = []
    with open(os.path.join(state_dir, "runs.jsonl"), encoding="utf-8") as sink:
        for number, line in enumerate(sink, 1):
            try:
                events.append(json.loads(line))
            except ValueError:
                problems.append(f"runs.jsonl line {number} is not JSON: {line[:80]!r}")
    repeats = [key for key, n in collections.Counter(e.get("event_id") for e in events).items() if n > 1]
    if repeats:
        problems.append(f"{len(repeats)} events exported more than once, e.g. {repeats[0]}")
    exported = {e.get("run_id"): e for e in events}
    missing, extra = jobs.keys() - exported.keys(), exported.keys() - jobs.keys()
    if missing:
        problems.append(f"{len(missing)} finished Jobs not exported, e.g. {sorted(missing)[0]}")
    if extra:
        problems.append(f"{len(extra)} exported Jobs the simulator does not have, e.g. {sorted(extra)[0]}")
    wrong = []
    for run_id, event in exported.items():
        status = jobs[run_id]["status"] if run_id in jobs else event.get("status")
        expected = ("run.finished", status, f"{run_id}:{status}")
        if (event.get("event"), event.get("status"), event.get("event_id")) != expected:
            wrong.append(run_id)
    if wrong:
        problems.append(f"{len(wrong)} events with a wrong status, event or event_id, e.g. {sorted(wrong)[0]}")

    for problem in problems:
        print(f"check: FAIL: {problem}", file=sys.stderr)
    if problems:
        return 1
    by_status = ", ".join(f"{n} {s}" for s, n in collections.Counter(e["status"] for e in events).most_common())
    print(
        f"check: OK: uid/gid 10001:10001, state.db 0600 on the volume, {len(events)} finished Jobs exported "
        f"exactly once ({by_status})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
