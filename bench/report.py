"""docs/benchmarks.md and its charts, from the results saved in var/bench/results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import DOCS, load_results

COMMAND = "make bench"  # = .venv/bin/python -m bench.run after installing .[dev,bench]


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("**PASS**" if ok else "**MISS**")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---- charts ------------------------------------------------------------------------------------


def _charts(results: dict[str, Any]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    throughput = results.get("throughput")
    if throughput:
        labels, values, targets = [], [], []
        labels.append("extraction\n(sync normal)")
        values.append(throughput["extraction"]["jobs_per_cpu_second"])
        targets.append(throughput["targets"]["extraction"])
        labels.append("extraction\n(sync full)")
        values.append(throughput["extraction_full"]["jobs_per_cpu_second"])
        targets.append(throughput["targets"]["extraction"])
        for name, sink in throughput["sinks"].items():
            labels.append(f"sink\n{name}")
            values.append(sink["jobs_per_cpu_second"])
            targets.append(throughput["targets"]["sink"])
        labels.append("end to end\n(3 sinks)")
        values.append(throughput["end_to_end"]["jobs_per_cpu_second"])
        targets.append(None)
        fig, ax = plt.subplots(figsize=(9, 4.2))
        colors = ["#2b7bba" if t is None or v >= t else "#d9534f" for v, t in zip(values, targets, strict=True)]
        ax.bar(range(len(values)), values, color=colors)
        for i, target in enumerate(targets):
            if target:
                ax.hlines(target, i - 0.4, i + 0.4, colors="black", linestyles="dashed")
        ax.axhline(500, color="#999999", linewidth=1)
        ax.text(-0.4, 500 + max(values) * 0.015, "the API's ceiling, 500 Jobs/s", fontsize=8, color="#666666")
        ax.set_xticks(range(len(values)), labels, fontsize=8)
        ax.set_ylabel("Jobs per CPU second (one core)")
        ax.set_title(f"Throughput, backfill of {throughput['jobs']:,} Jobs (dashed: target; red: below target)")
        fig.tight_layout()
        fig.savefig(DOCS / "benchmarks-throughput.png", dpi=110)
        plt.close(fig)
        made.append("benchmarks-throughput.png")
    memory = results.get("memory")
    rate = results.get("ratelimit")
    if memory or rate:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        if memory:
            ax = axes[0]
            for run in memory["runs"]:
                series = run["rss_series"]
                if series:
                    ax.plot([t for t, _ in series], [mb for _, mb in series], label=f"{run['jobs']:,} Jobs")
            ax.axhline(memory["target_mb"], color="#d9534f", linestyle="dashed", label="target")
            ax.set_xlabel("seconds since the daemon started")
            ax.set_ylabel("RSS (MB)")
            ax.set_ylim(0, max(memory["target_mb"] * 1.2, max(r["peak_rss_mb"] for r in memory["runs"]) * 1.1))
            ax.set_title("Memory: exporter RSS during a backfill")
            ax.legend(fontsize=8)
        if rate:
            ax = axes[1]
            for who, style in (("exporter", "-"), ("naive", ":")):
                series = rate[who].get("series") or []
                if len(series) > 11:
                    points = [
                        (series[i][0], (series[i][1] - series[i - 10][1]) * 60 / (series[i][0] - series[i - 10][0]))
                        for i in range(10, len(series))
                    ]
                    label = "exporter" if who == "exporter" else "guide's script"
                    ax.plot([t for t, _ in points], [r for _, r in points], style, label=label)
            ax.axhline(rate["budget"], color="#d9534f", linestyle="dashed", label="budget")
            ax.set_xlabel("seconds")
            ax.set_ylabel("requests/min (10 s average)")
            ax.set_title(f"Rate limit: {rate['budget']:,}/min budget")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(DOCS / "benchmarks-memory-ratelimit.png", dpi=110)
        plt.close(fig)
        made.append("benchmarks-memory-ratelimit.png")
    return made


# ---- sections ----------------------------------------------------------------------------------


def _machine(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    memory = m.get("memory_bytes")
    rows = [
        ["CPU", f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores (the simulator and receivers share them)"],
        ["RAM", f"{memory / 1024**3:.1f} GiB" if memory else "?"],
        ["Python / SQLite", f"{m.get('python', '?')} / {m.get('sqlite', '?')}"],
        ["OS", m.get("os", "?")],
        ["load average at start (1 min)", _n(m.get("load_average"), 2)],
        [
            "commit",
            f"`{m.get('commit', '?')}`" + (" plus uncommitted changes to exporter/ or sinks/" * bool(m.get("dirty"))),
        ],
        [
            "run",
            f"{m.get('date', '?')}"
            + (" (**--quick**: small sizes, not the reference numbers)" if m.get("quick") else ""),
        ],
    ]
    return _table(["", ""], rows)


def _summary(results: dict[str, Any]) -> tuple[str, list[tuple[str, bool]]]:
    rows, verdicts = [], []

    def add(scenario: str, figure: str, target: str, measured: str, ok: bool | None) -> None:
        rows.append([scenario, figure, target, measured, _verdict(ok)])
        if ok is not None:
            verdicts.append((f"{scenario}: {figure}", ok))

    t = results.get("throughput")
    if t:
        ex = t["extraction"]
        add(
            "1 throughput",
            "extraction into the outbox",
            f">= {t['targets']['extraction']:,} Jobs/s/core",
            f"{ex['jobs_per_cpu_second']:,.0f} Jobs/s/core",
            ex["jobs_per_cpu_second"] >= t["targets"]["extraction"],
        )
        for name, sink in t["sinks"].items():
            add(
                "1 throughput",
                f"sink `{name}`",
                f">= {t['targets']['sink']:,} Jobs/s/core",
                f"{sink['jobs_per_cpu_second']:,.0f} Jobs/s/core",
                sink["jobs_per_cpu_second"] >= t["targets"]["sink"],
            )
        e2e = t["end_to_end"]
        add(
            "1 throughput",
            "end to end, daemon with 3 sinks",
            "> 500 Jobs/s (the API's ceiling)",
            f"{e2e['jobs_per_second']:,.0f} Jobs/s",
            e2e["complete"] and e2e["jobs_per_second"] > 500,
        )
    r = results.get("ratelimit")
    if r:
        ex = r["exporter"]
        add(
            "2 rate limit",
            "requests/min as a share of the budget",
            f">= {r['target']:.2f}",
            f"{ex['utilisation']:.3f}",
            ex["utilisation"] >= r["target"],
        )
        add("2 rate limit", "429s received", "0", str(ex["rate_limited"]), ex["rate_limited"] == 0)
    e = results.get("efficiency")
    if e:
        v = e["variants"]["exporter"]
        add(
            "3 efficiency",
            "Duvo requests per 100 exported Jobs",
            f"<= {e['target']}",
            f"{v['per_100']:.2f}",
            v["per_100"] <= e["target"],
        )
    m = results.get("memory")
    if m:
        for run in m["runs"]:
            add(
                "4 memory",
                f"peak RSS, {run['jobs']:,}-Job backfill",
                f"< {m['target_mb']:.0f} MB",
                f"{run['peak_rss_mb']:.1f} MB",
                run["complete"] and run["peak_rss_mb"] < m["target_mb"],
            )
    f = results.get("freshness")
    if f:
        a = f["any_sink"]
        add(
            "5 freshness",
            "lag p95, terminal to first byte at a sink",
            f"<= {f['target_p95']:.0f} s",
            f"{_lag(a, 'p95')} s (p50 {_lag(a, 'p50')} s)",
            a["p95"] is not None and not a["p95_at_least"] and a["p95"] <= f["target_p95"],
        )
    w = results.get("webhooks")
    if w:
        add(
            "7 webhooks",
            "latency p95, webhook sent to first byte at a sink",
            f"< {w['target_p95']:.0f} s",
            f"{_n(w['p95'], 3)} s (p50 {_n(w['p50'], 3)} s)",
            w["p95"] is not None and w["p95"] < w["target_p95"] and not w["missing"],
        )
    return _table(["scenario", "figure", "target", "measured", ""], rows), verdicts


def _profile_section(profile: dict[str, Any]) -> str:
    out = [
        f"cProfile on a separate backfill of {profile['jobs']:,} Jobs (profiling slows everything down, so the "
        "shares matter, not the times). Time blocked on a socket (waiting for the simulator or a receiver) is set "
        "apart; the shares below are of the remaining busy time, and a built-in function's time is charged to "
        "the area that called it.\n\n"
    ]
    phases = profile["phases"]
    names = list(phases)
    areas: dict[str, dict[str, float]] = {}
    for phase, data in phases.items():
        for area, share in data["areas"]:
            areas.setdefault(area, {})[phase] = share
    ordered = sorted(areas, key=lambda a: -max(areas[a].values()))
    rows = [[area, *[_pct(areas[area].get(p)) for p in names]] for area in ordered]
    rows.append(
        [
            "*(time blocked on sockets, share of wall)*",
            *[
                _pct(phases[p]["waiting_seconds"] / (phases[p]["waiting_seconds"] + phases[p]["busy_seconds"]))
                for p in names
            ],
        ]
    )
    out.append(_table(["where the busy time goes", *names], rows))
    for phase, data in phases.items():
        top = [
            [f"`{item['function']}`", _n(item["calls"]), _pct(item["self_share"]), _pct(item["cumulative_share"])]
            for item in data["top"][:6]
        ]
        out.append(f"\nTop functions, {phase} (self time; cumulative includes callees):\n\n")
        out.append(_table(["function", "calls", "self", "cumulative"], top))
    return "".join(out)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _throughput(t: dict[str, Any]) -> str:
    ex, full, e2e = t["extraction"], t["extraction_full"], t["end_to_end"]
    rows = [
        [
            "extraction into the outbox, `synchronous: normal`",
            _n(ex["jobs_per_cpu_second"]),
            _n(ex["cpu_us_per_job"]),
            _n(ex["jobs_per_wall_second"]),
            f">= {t['targets']['extraction']:,}",
            _verdict(ex["jobs_per_cpu_second"] >= t["targets"]["extraction"]),
        ],
        [
            "extraction into the outbox, `synchronous: full` (default)",
            _n(full["jobs_per_cpu_second"]),
            _n(full["cpu_us_per_job"]),
            _n(full["jobs_per_wall_second"]),
            f">= {t['targets']['extraction']:,}",
            _verdict(full["jobs_per_cpu_second"] >= t["targets"]["extraction"]),
        ],
    ]
    for name, sink in t["sinks"].items():
        rows.append(
            [
                f"sink `{name}` (`SinkWorker.drain`, {sink['requests']} requests)",
                _n(sink["jobs_per_cpu_second"]),
                _n(sink["cpu_us_per_job"]),
                _n(sink["jobs_per_wall_second"]),
                f">= {t['targets']['sink']:,}",
                _verdict(sink["jobs_per_cpu_second"] >= t["targets"]["sink"]),
            ]
        )
    rows.append(
        [
            "end to end: `duvo-exporter run`, 3 sinks (all phases at once)",
            _n(e2e["jobs_per_cpu_second"]),
            _n(e2e["cpu_us_per_job"]),
            _n(e2e["jobs_per_second"]),
            "> 500 Jobs/s wall",
            _verdict(e2e["complete"] and e2e["jobs_per_second"] > 500),
        ]
    )
    checks = ", ".join(
        f"{name}: {s['received']:,} received, {s['duplicates']} duplicates" for name, s in t["sinks"].items()
    )
    return (
        f"A backfill of **{t['jobs']:,} Jobs**, every one finished, with the rate limit lifted in the simulator and "
        "the exporter. Extraction runs alone first (workers not started), then each sink drains the outbox alone, "
        "against its receiver in another process; CPU is this process's `time.process_time()`, which ran nothing "
        "else meanwhile, so **Jobs/s/core = Jobs per CPU second**. The end-to-end row is the real daemon as a "
        "child process, from its start until all three receivers held every Job; its CPU is the kernel's account "
        "of that process alone (start-up included). Loki's pacing (`max_bytes_per_second`, 2 MB/s by default) is "
        "off in this scenario only, so that the figure is the sink's and not the pacing's.\n\n"
        + _table(["phase", "Jobs/s/core (CPU)", "CPU us/Job", "Jobs/s wall", "target", ""], rows)
        + f"\nDelivery checks: {checks}. End to end: {', '.join(f'{k} {v:,}' for k, v in e2e['received'].items())} "
        f"received, duplicates {sum(e2e['duplicates'].values())}; peak RSS {e2e['peak_rss_mb']:.0f} MB; "
        f"wall {e2e['wall_seconds']:.0f} s. `synchronous: full` costs wall time (an fsync per page), "
        "not CPU.\n\n"
        "### Where the time goes\n\n" + _profile_section(t["profile"])
    )


def _span(low: float | None, high: float | None) -> str:
    return "- (run under 60 s)" if low is None or high is None else f"{low:,.0f} to {high:,.0f}"


def _ratelimit(r: dict[str, Any]) -> str:
    ex, naive = r["exporter"], r["naive"]
    rows = [
        [
            "exporter (`duvo-exporter run`, `requests_per_minute` = budget)",
            _n(ex["seconds"]),
            _n(ex["requests"]),
            _n(ex["per_minute"]),
            f"{ex['utilisation']:.3f}",
            _span(ex.get("window_min"), ex.get("window_max")),
            str(ex["rate_limited"]),
        ],
        [
            f"guide's script, cron every {r['naive_cron_seconds']:.0f} s",
            _n(naive.get("seconds")),
            _n(naive.get("requests")),
            _n(naive.get("per_minute")),
            f"{naive.get('utilisation', 0):.3f}",
            _span(naive.get("window_min"), naive.get("window_max")),
            f"{naive.get('rate_limited', 0)} ({naive['failed_invocations']} of {naive['invocations']} runs failed)",
        ],
    ]
    return (
        f"The simulator enforces **{r['budget']:,} requests/min** per key (a sliding 60 s window, as the real API "
        "does at 300/min; scaled up so that minutes of backfill fit in the run), and the exporter is configured "
        f"with the same number. `page_size` is {r['page_size']} so that this machine's CPU, which also runs the "
        "simulator, is not what limits the rate: the scenario measures pacing, not throughput. The request "
        "counters of the simulator are sampled every second during a backfill that the budget cannot finish.\n\n"
        + _table(
            ["who", "seconds", "requests", "requests/min", "share of budget", "any 60 s window (per min)", "429s"],
            rows,
        )
        + f"\nTarget: share >= {r['target']:.2f} and no 429. The exporter paces with a token bucket of rate "
        "`requests_per_minute`/60 per second and a burst of one second's worth; such a bucket can grant up to "
        "`requests_per_minute` + burst requests in a 60 s window, while the API counts a sliding 60 s window. "
        "Configured to the whole budget, as here, the burst can therefore tip a window over the limit (the 429s, if "
        "any, come at about one-minute marks); with the default share (240 of 300) there are 60 requests/min of "
        "headroom. The guide's script has no pacing at all: each cron run reads until a 429 ends it.\n"
    )


def _efficiency(e: dict[str, Any]) -> str:
    labels = {
        "exporter": "exporter, default `extract.recheck` (the sweep, then the age schedule)",
        "exporter_no_sweep": "exporter, `recheck.sweep_pages: 0` (age x 0.25 in [0s, 1h] only)",
        "exporter_recheck_30m": "exporter, `sweep_pages: 0, min_interval: 30m`",
        "recheck_all_by_get": "re-check every open Job each pass, GET /runs/{id}",
    }
    rows = []
    for name, v in e["variants"].items():
        ok = v["per_100"] <= e["target"] if name == "exporter" else None
        rows.append(
            [
                labels.get(name, name),
                f"{_n(v['pages'])} ({_n(v.get('sweep_pages', 0))})",
                _n(v["gets"]),
                _n(v["exported"]),
                f"{v['per_100']:.2f}",
                f"{v['lost']} / {v['duplicates']}",
                f"{_n(v.get('diagnosis_requests', 0))} ({v.get('diagnosis_per_100', 0.0):.2f})",
                _verdict(ok),
            ]
        )
    naive = e["naive"]
    rows.append(
        [
            "guide's script (reads each Job once)",
            f"{_n(naive['requests'])} (0)",
            "0",
            _n(naive["exported"]),
            f"{naive['per_100']:.2f}",
            f"{naive['lost']} ({naive['lost_share']:.0%}) / {naive['duplicates']}",
            "-",
            "-",
        ]
    )
    seen = e["variants"]["exporter"]["first_seen_open"]
    measured_hours = e["hours"] - e["warmup_hours"]
    return (
        f"A steady state on a simulated clock: {e['jobs_per_second']:g} Job/s "
        f"(~{e['jobs_per_second'] * e['interval_seconds']:.0f} per pass), a pass every "
        f"{e['interval_seconds'] / 60:.0f} minutes (the default schedule), {e['hours']:g} simulated hours of which "
        f"the first {e['warmup_hours']:g} are warm-up; counted over the last {measured_hours:g}. "
        f"**{seen:.0%} of the Jobs were still open when first seen** (simulator `late_fraction` {e['late_fraction']}, "
        f"lifecycles divided by {e['time_scale']:g}: the late ones run 30 s to 1 h). All variants see the identical "
        "workload (same seed, same simulated start). Lost = finished Jobs never exported (after a final sweep for "
        "the exporter); duplicated = exported more than once.\n\n"
        + _table(
            [
                "variant",
                "list pages (of them sweep)",
                "GETs",
                "Jobs exported",
                "requests per 100 exported",
                "lost / duplicated",
                "diagnosis: messages requests (per 100 exported)",
                "",
            ],
            rows,
        )
        + f"\nTarget: <= {e['target']} requests per 100 exported Jobs for the default configuration.\n"
        "Requests per 100 count extraction only; diagnosis (the message logs of failed, interrupted and stopped "
        "Jobs, README \"Diagnosis\") is the column beside it, spent from its own budget.\n\n"
        + _efficiency_floor(e)
    )


def _efficiency_floor(e: dict[str, Any]) -> str:
    """Why no configuration can reach the target on this API, with this run's own numbers."""
    naive = e["naive"]
    v = e["variants"]["exporter"]
    new_only = 100 * naive["requests"] / max(1, v["exported"])
    late_per_pass = v["first_seen_open"] * e["jobs_per_second"] * e["interval_seconds"]
    left = max(0.0, e["target"] - new_only)
    return (
        "**Why the target cannot be met on this API.** Any exporter must (a) read every Job once when it "
        "is new and (b) read the outcome of every late Job at least once after it finished. For (a), the "
        f"guide's script, which reads each Job exactly once and nothing else, used {naive['requests']:,} "
        f"requests for the same {v['exported']:,} Jobs: **{new_only:.2f} per 100 before any re-check** "
        "(about 300 new Jobs per pass fill three pages and a partial one). That leaves "
        f"{left:.2f} per 100 for (b), about one request per pass for the ~{late_per_pass:.0f} late "
        "outcomes that arrive per pass. The list API sorts only by `created_at` and filters only by agent, "
        'status and issue flags; nothing selects "finished since". So a late outcome arrives either by a '
        f"`GET` (one Job per request: {100 * v['first_seen_open']:.0f} per 100 here) or on a list page "
        "together with the rest of its creation-time window, which must then be read again. Even if every "
        "outcome were held back until the longest Job of its window had ended (an hour here, unbounded in "
        "general), every window would be read a second time: at least twice (a), about "
        f"{2 * new_only:.1f} per 100. The sweep spends more than that floor to deliver each outcome within "
        "one pass; `sweep_pages: 0` with a long `min_interval` trades freshness for fewer requests.\n"
    )


def _memory(m: dict[str, Any], throughput: dict[str, Any] | None) -> str:
    rows = [
        [
            f"{run['jobs']:,}",
            f"{run['peak_rss_mb']:.1f}",
            _n(run["jobs_per_second"]),
            _n(run["wall_seconds"]),
            f"{run['state_db_mb']:.0f}" if run.get("state_db_mb") is not None else "-",
            f"< {m['target_mb']:.0f}",
            _verdict(run["complete"] and run["peak_rss_mb"] < m["target_mb"]),
        ]
        for run in m["runs"]
    ]
    extra = ""
    if throughput:
        e2e = throughput["end_to_end"]
        extra = (
            f"\nFor comparison, the end-to-end throughput run ({throughput['jobs']:,} Jobs, all three HTTP sinks) "
            f"peaked at {e2e['peak_rss_mb']:.0f} MB.\n"
        )
    return (
        "The real daemon with a file sink, from start until the sink has every Job of the backfill. Peak RSS is the "
        "kernel's high-water mark (`VmHWM`) of the exporter process alone (the simulator runs in another process).\n\n"
        + _table(["backfill (Jobs)", "peak RSS (MB)", "Jobs/s", "seconds", "state file (MB)", "target", ""], rows)
        + extra
    )


def _lag(res: dict[str, Any], key: str) -> str:
    """A lag percentile; ">= x" when it falls among Jobs that had not arrived by the end."""
    return ("&ge; " if res.get(f"{key}_at_least") else "") + _n(res.get(key), 1)


def _freshness(f: dict[str, Any]) -> str:
    rows = []
    for name, res in [
        *f["sinks"].items(),
        ("any sink (first of the three)", f["any_sink"]),
        ("guide's script (its own Datadog receiver; the rest were forwarded while open: lost)", f["naive"]),
    ]:
        rows.append(
            [
                name,
                _n(res["considered"]),
                f"{res['delivered']:,}" + (f" ({res['missing']} not by the end)" * bool(res["missing"])),
                _lag(res, "p50"),
                _lag(res, "p95"),
                _n(res["max"], 1),
                f"{_lag(res, 'long_p50')} / {_lag(res, 'long_p95')} ({res['long_jobs']})",
            ]
        )
    any_sink = f["any_sink"]
    ok = any_sink["p95"] is not None and not any_sink["p95_at_least"] and any_sink["p95"] <= f["target_p95"]
    return (
        f"The simulator generates {f['jobs_per_second']:g} Jobs/s in real time with its default lifecycles (most "
        "finish within seconds, 10% run for 2 minutes to 4 hours) and the real 300/min limit, on top of "
        f"{f.get('history_hours', 0):g} hours of history, so that Jobs which started long ago finish during the run "
        "as they do in a steady state. A warm-up `once` (rate limit lifted) reads the history first, as a daemon "
        "that had been running would have. Then the daemon runs with "
        f"`schedule.every: {f['interval_seconds']:.0f}s` and otherwise default settings (240 requests/min, "
        "`synchronous: full`, `extract.recheck` with the sweep of up to 20 pages, each sink's default batching, Loki's "
        f"pacing on) for **{f['run_seconds']:.0f} s** (shortened from hours). Lag = first arrival of the finished "
        "outcome at the receiver minus the Job's `completed_at`; Jobs finishing in the first 5 s or the last 40 s "
        "are left out (not delivered = finished in the window but not arrived by the end of the run). The last "
        "column is the Jobs that ran longer than one interval, which are found finished by the sweep.\n\n"
        + _table(
            [
                "receiver",
                "Jobs finished",
                "delivered",
                "p50 (s)",
                "p95 (s)",
                "max (s)",
                "p50 / p95 of Jobs > 1 interval",
            ],
            rows,
        )
        + f"\nTarget: p95 <= interval + 2 s = {f['target_p95']:.0f} s: {_verdict(ok)}.\n"
        + (
            f"\nThe daemon used {f['daemon_requests']:,} Duvo requests in the run, "
            f"{f['daemon_requests_per_minute']:.0f} per minute of its 240: new Jobs, the sweep of the open ones "
            "and the fetches of those that finished.\n"
            if "daemon_requests" in f
            else ""
        )
    )


def _versus(results: dict[str, Any]) -> str:
    rows = []
    t = results.get("throughput")
    if t:
        ex, dd, naive = t["extraction"], t["sinks"].get("datadog", {}), t["naive"]
        ours = t["jobs"] / (ex["wall_seconds"] + dd.get("wall_seconds", 0.0))
        rows.append(
            [
                f"1 backfill, {t['jobs']:,} Jobs, one Datadog sink",
                f"0 / {dd.get('duplicates', 0)} / {ex['requests']:,} / {ours:,.0f}",
                f"{naive['lost']} / {naive['duplicates']} / {naive['requests']:,} / {naive['jobs_per_second']:,.0f}",
            ]
        )
    r = results.get("ratelimit")
    if r:
        ex, naive = r["exporter"], r["naive"]
        rows.append(
            [
                f"2 backfill under a {r['budget']:,}/min budget",
                f"429s {ex['rate_limited']}, {ex['per_minute']:,.0f} req/min",
                f"429s {naive.get('rate_limited', 0)}, {naive.get('per_minute', 0):,.0f} req/min, "
                f"{naive['failed_invocations']} failed runs",
            ]
        )
    e = results.get("efficiency")
    if e:
        v, naive = e["variants"]["exporter"], e["naive"]
        rows.append(
            [
                "3 steady state, 30% finish after first seen",
                f"{v['lost']} / {v['duplicates']} / {v['per_100']:.2f} per 100 / -",
                f"{naive['lost']:,} ({naive['lost_share']:.0%}) / {naive['duplicates']} / "
                f"{naive['per_100']:.2f} per 100 / -",
            ]
        )
    f = results.get("freshness")
    if f:
        a, naive = f["any_sink"], f["naive"]
        rows.append(
            [
                f"5 real time, {f['interval_seconds']:.0f} s passes",
                f"{a['missing']} not yet delivered at the end, {a['duplicates']} dup, p95 lag {_lag(a, 'p95')} s",
                f"{naive['missing']} never delivered, {naive['duplicates']} dup, p95 lag {_lag(naive, 'p95')} s",
            ]
        )
    return (
        "`bench/naive.py` re-implements the forwarding example of Duvo's monitoring guide: a persisted offset, "
        "`sort_order=asc` without `since`, every row forwarded whatever its status, one sink, `raise_for_status()` "
        "and no retries. One generous change: it reads pages until it is caught up, where the guide reads one page "
        "per cron run. Cells: lost / duplicated / Duvo requests / Jobs per second, unless stated. The exporter's "
        "Jobs per second in row 1 are extraction followed by the Datadog sink's drain (what `once` does with one "
        "sink), from scenario 1.\n\n"
        + _table(["scenario", "exporter", "guide's script"], rows)
        + "\nThe script is fast because it does almost nothing: it keeps no state, so every Job that is not finished "
        "when it is read is forwarded with its open status and its outcome never arrives, and nothing paces it.\n"
    )


def _webhooks(w: dict[str, Any]) -> str:
    return (
        f"{w['jobs']} Jobs started through `POST /teams/{{team}}/runs` with a `webhook_url`, "
        f"{w['jobs_per_second']:g} per second, each POSTing `run_completed` (or failed, stopped, interrupted) "
        "to the daemon's `POST /webhooks/duvo` when it finished. The daemon ran with its defaults (240 "
        "requests/min, `synchronous: full`, Datadog's default batching) and a pass every 5 minutes, so "
        "every Job below reached the sink through its webhook, not through polling. Latency: from the "
        "simulator sending the webhook to the Datadog receiver getting the Job's event (one clock).\n\n"
        + _table(
            ["Jobs", "arrived", "missing", "repeated", "p50 (s)", "p95 (s)", "p99 (s)", "max (s)"],
            [
                [
                    str(w["jobs"]),
                    str(w["arrived"]),
                    str(w["missing"]),
                    str(w["repeats"]),
                    _n(w["p50"], 3),
                    _n(w["p95"], 3),
                    _n(w["p99"], 3),
                    _n(w["max"], 3),
                ]
            ],
        )
        + "\nThe path: the handler queues the run_id durably and answers 202; the webhook processor "
        "fetches `GET /runs/{id}` (one request of the budget per webhook) and writes the event to the "
        "outbox with the queue row's deletion; the sink worker, woken at once, sends it. "
        "The tail is the sink's batching: an event that arrives while the worker lets a partial "
        "batch fill waits up to `batch.flush_interval` (1 s by default).\n"
    )


def _micro(micro: dict[str, Any]) -> str:
    rows = [
        [f"`{b['name']}`", _n(b["mean_us"], 0), _n(b["per_event_us"], 1), _n(b["stddev_us"], 0), str(b["rounds"])]
        for b in micro["benchmarks"]
    ]
    return (
        f"`bench/micro/test_micro.py` (pytest-benchmark), {micro['batch']} events per round; run with "
        "`python -m bench.run --only micro` or `.venv/bin/python -m pytest bench/micro`. For spotting regressions "
        "in review, not a pass/fail test. Wall time of this machine.\n\n"
        + _table(["benchmark", "mean per round (us)", "per event (us)", "stddev (us)", "rounds"], rows)
    )


def write_report(path: Path | None = None) -> Path:
    results = load_results()
    path = path or DOCS / "benchmarks.md"
    charts = _charts(results)
    summary, verdicts = _summary(results)
    missed = [name for name, ok in verdicts if not ok]
    parts = [
        "# Benchmarks\n\n",
        "Generated by `make bench` (`python -m bench.run`, code in `bench/`); do not edit by hand. The simulator, "
        "each receiver and, where stated, the exporter run as separate processes on this machine, over loopback "
        "HTTP, so that the exporter's CPU and memory are its own.\n\n",
        "## The machine\n\n",
        _machine(results),
        f"\nReproduce: `{COMMAND}` (about 10 minutes; `python -m bench.run --quick` for a smoke run of a few minutes, "
        "`--only SCENARIO` for one scenario).\n\n",
        "## Summary\n\n",
        summary,
        "\n" + (f"Missed: {len(missed)} of {len(verdicts)} targets.\n\n" if missed else "Every target met.\n\n"),
    ]
    if charts:
        parts.append("".join(f"![{name}]({name})\n\n" for name in charts))
    sections = [
        ("1. Throughput", "throughput", lambda d: _throughput(d)),
        ("2. Rate-limit utilisation", "ratelimit", lambda d: _ratelimit(d)),
        ("3. Request efficiency", "efficiency", lambda d: _efficiency(d)),
        ("4. Memory", "memory", lambda d: _memory(d, results.get("throughput"))),
        ("5. Freshness", "freshness", lambda d: _freshness(d)),
    ]
    for title, key, render in sections:
        if key in results:
            parts += [f"## {title}\n\n", render(results[key]), "\n"]
    if any(key in results for key in ("throughput", "ratelimit", "efficiency", "freshness")):
        parts += ["## 6. Versus the guide's naive pipeline\n\n", _versus(results), "\n"]
    if "webhooks" in results:
        parts += ["## 7. Webhooks\n\n", _webhooks(results["webhooks"]), "\n"]
    if "micro" in results:
        parts += ["## Micro-benchmarks\n\n", _micro(results["micro"]), "\n"]
    path.write_text("".join(parts).rstrip() + "\n")
    return path
