"""`status` on a terminal: the same facts as the plain text, as rich tables.

Only used when stdout is a TTY; piped output stays the plain lines scripts and tests read, and
`--json` is the machine format."""

from __future__ import annotations

from typing import Any, TextIO


def render(data: dict[str, Any], *, dead_letters: bool, file: TextIO | None = None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, highlight=False)
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("state", data["state_path"])
    if not data["initialized"]:
        summary.add_row("", "no state yet: the exporter has not run with this config")
        console.print(summary)
        return
    summary.add_row("writer", data["writer"] or "none running")
    last = data["last_pass"]
    if last is None:
        summary.add_row("last pass", "none recorded yet")
    else:
        style = {"ok": "green", "incomplete": "yellow"}.get(last["outcome"], "red")
        text = (
            f"[{style}]{last['outcome']}[/] at {last['finished_at']} "
            f"({last['events']} event(s), {last['requests']} request(s), {last['seconds']:g}s)"
        )
        if last["error"]:
            text += f": {_escape(last['error'])}"
        summary.add_row("last pass", text)
    for team, checkpoint in data["checkpoints"].items():
        summary.add_row("checkpoint", f"team {team}: Jobs created up to {checkpoint} read")
    open_jobs = data["open_jobs"]
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(open_jobs["by_status"].items())) or "none"
    summary.add_row(
        "open jobs", f"{open_jobs['open']} ({by_status}); oldest created {open_jobs['oldest_created_at'] or '-'}"
    )
    summary.add_row("outbox", f"{data['outbox']['events']} event(s) held")
    console.print(summary)

    sinks = Table(title="sinks", box=box.SIMPLE_HEAVY, title_justify="left")
    for name, justify in (
        ("sink", "left"),
        ("type", "left"),
        ("backlog", "right"),
        ("delivered", "right"),
        ("dead", "right"),
        ("filtered", "right"),
        ("last success", "left"),
        ("last error", "left"),
    ):
        sinks.add_column(name, justify=justify)  # type: ignore[arg-type]
    for sink in data["sinks"]:
        note = "-"
        if sink["stopped"]:
            note = f"[red]STOPPED: {_escape(sink['stopped'])}[/]"
        elif sink["last_error"]:
            note = _escape(sink["last_error"])
        if sink["dead_letters"]:
            note += f"; last dead letter: {_escape(sink['last_dead_letter_reason'] or '')}"
        name = sink["name"] if sink["configured"] else f"{sink['name']} (no longer configured)"
        sinks.add_row(
            name,
            sink["type"] or "-",
            str(sink["backlog"]),
            str(sink["delivered"]),
            f"[red]{sink['dead_letters']}[/]" if sink["dead_letters"] else "0",
            str(sink["filtered"]),
            sink["last_success_at"] or "-",
            note,
        )
    console.print(sinks)

    if data.get("backfills"):
        backfills = Table(title="backfills", box=box.SIMPLE_HEAVY, title_justify="left")
        for name in ("kind", "team", "window", "sink", "read up to", "events", "finished"):
            backfills.add_column(name)
        for item in data["backfills"]:
            backfills.add_row(
                item["kind"],
                item["team_id"],
                f"{item['since']} .. {item['until']}",
                item["sink"] or "every sink",
                item["position"] or "-",
                str(item["events"]),
                item["finished_at"] or "[yellow]not yet: run the same command again[/]",
            )
        console.print(backfills)

    if dead_letters:
        letters = Table(title=f"dead letters: {len(data['dead_letters'])}", box=box.SIMPLE_HEAVY, title_justify="left")
        for name in ("sink", "run_id", "failed at", "reason"):
            letters.add_column(name)
        for letter in data["dead_letters"]:
            letters.add_row(letter["sink"], letter["run_id"], letter["failed_at"], _escape(letter["reason"]))
        console.print(letters)
        if data["dead_letters"]:
            console.print("re-send with: duvo-exporter replay")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
