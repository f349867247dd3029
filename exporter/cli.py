"""The `duvo-exporter` command line: run, once, check, status, replay, backfill, reset-sink, demo, simulate."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import structlog

from exporter import __version__, exitcodes
from exporter.config import Config, ConfigError, load_config
from exporter.logsetup import LOG_FORMATS, configure_logging, redact, register_secret
from exporter.state.store import StateError
from transport import timestamps

log = structlog.get_logger("exporter.cli")

DEFAULT_CONFIG = "config/exporter.yaml"


class UsageError(Exception):
    pass


class _RolledBack(Exception):
    pass


def _load(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("DUVO_EXPORTER_CONFIG") or DEFAULT_CONFIG
    config = load_config(path)
    for secret in config.secrets():
        register_secret(secret)
    for warning in config.warnings:
        log.warning(warning)
    return config


# ---- commands ----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from exporter.pipeline import Exporter
    from exporter.scheduler import install_stop_handlers, run_daemon
    from exporter.server.app import ServerError

    config = _load(args)
    stop = threading.Event()
    install_stop_handlers(stop)
    exporter = Exporter(config)
    try:
        return run_daemon(exporter, config.schedule, stop)
    except ServerError as exc:
        raise UsageError(str(exc)) from None
    finally:
        exporter.close()


def cmd_once(args: argparse.Namespace) -> int:
    from exporter.pipeline import Exporter
    from exporter.scheduler import install_stop_handlers
    from exporter.source.duvo_client import DuvoAuthError, DuvoError

    config = _load(args)
    stop = threading.Event()
    install_stop_handlers(stop)
    exporter = Exporter(config, command="once")
    code = exitcodes.OK
    try:
        try:
            exporter.extract(stop)
        except DuvoAuthError as exc:
            _error(str(exc))
            code = exitcodes.DUVO_AUTH
        except DuvoError as exc:
            _error(f"pass incomplete, committed pages are kept: {exc}")
            code = exitcodes.DUVO_UNAVAILABLE
        if not stop.is_set():
            # No next pass is sure to come: what this one held for its diagnosis goes out now
            # (read while the diagnosis budget lasts, else `unavailable`).
            exporter.release_held()
        # Deliver whatever is in the outbox even if extraction failed part-way.
        outcomes = exporter.drain(stop)
        failed = {name: outcome for name, outcome in outcomes.items() if outcome not in ("drained", "interrupted")}
        if failed and code == exitcodes.OK:
            _error(
                "sinks left a backlog (kept for the next run): " + ", ".join(f"{n} ({o})" for n, o in failed.items())
            )
            code = exitcodes.SINK
        dead = {w.name: w.counters for w in exporter.workers if w.counters.rejected}
        for name, counters in dead.items():
            log.error(
                "backend rejected events permanently; they are dead letters",
                sink=name,
                events=counters.rejected,
                delivered=counters.delivered,
                last_reason=counters.last_rejection,
                hint="duvo-exporter status --dead-letters; fix the cause, then duvo-exporter replay",
            )
        if dead and code == exitcodes.OK:
            code = args.dead_letter_exit_code
        return code
    finally:
        exporter.close()


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    print(f"config OK: {len(config.sinks)} sink(s), teams {', '.join(config.duvo.team_ids)}")
    if not args.connect:
        return exitcodes.OK
    from exporter.pipeline import build_client
    from exporter.source.duvo_client import DuvoError
    from sinks.base import SinkError
    from sinks.registry import build_sink

    code = exitcodes.OK
    client = build_client(config)
    try:
        for team in config.duvo.team_ids:
            try:
                page = client.list_runs(team, limit=1)
                print(f"duvo: OK (team {team}: {page.total if page.total is not None else '?'} jobs)")
            except DuvoError as exc:
                print(f"duvo: FAILED (team {team}): {redact(str(exc))}")
                code = exitcodes.DUVO_AUTH if getattr(exc, "status", None) in (401, 403) else exitcodes.DUVO_UNAVAILABLE
    finally:
        client.close()
    for index, settings in enumerate(config.sinks):
        # Named as configuration errors name them, so a failure points at the YAML.
        label = f"sinks[{index}] ({settings.name}, {settings.type})"  # type: ignore[attr-defined]
        try:
            sink = build_sink(settings)
            try:
                sink.healthcheck()
            finally:
                sink.close()
            print(f"{label}: OK")
        except (SinkError, OSError) as exc:
            print(f"{label}: FAILED: {redact(str(exc))}")
            code = code or exitcodes.SINK
    state_problem = _probe_state(config.state.path)
    if state_problem:
        print(f"state.path ({config.state.path}): FAILED: {state_problem}")
        code = exitcodes.STATE  # what `once` and `run` would meet first: they open the state before anything
    return code


def _probe_state(path: str) -> str | None:
    """Why the exporter could not open and write its state here, or None if it could.

    An existing file is opened and a write transaction begun and rolled back; a new one is not
    created, but its directory must exist or be creatable and be writable."""
    from exporter.state.lock import holder_of
    from exporter.state.store import StateStore

    if os.path.exists(path):
        try:
            with StateStore(path, create=False) as store, store.transaction() as conn:
                conn.execute("INSERT INTO meta(key, value) VALUES ('check_probe', '') ON CONFLICT(key) DO NOTHING")
                raise _RolledBack  # a real write, undone: the state is left as it was
        except _RolledBack:
            pass
        except StateError as exc:
            return str(exc)
        holder = holder_of(path)
        print(f"state.path ({path}): OK" + (f" (in use by {holder})" if holder else ""))
        return None
    directory = os.path.dirname(os.path.abspath(path))
    existing = directory
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        return f"directory {existing} is not writable, so the state file cannot be created"
    print(f"state.path ({path}): OK (created at the first run)")
    return None


def status_data(config: Config, *, dead_letters: bool = False) -> dict[str, Any]:
    from exporter.state.lock import holder_of
    from exporter.state.pass_record import LAST_PASS_KEY, PassRecord
    from exporter.state.store import StateStore

    if not os.path.exists(config.state.path):
        return {"state_path": config.state.path, "initialized": False}
    with StateStore(config.state.path, create=False) as store:
        letters = [
            {
                "sink": letter.sink,
                "run_id": letter.run_id,
                "event_id": letter.event_id,
                "failed_at": _iso(letter.failed_at),
                "reason": redact(letter.reason),
            }
            for letter in (store.dead_letters() if dead_letters else [])
        ]
        low, high = store.outbox_bounds()
        configured = {s.name: s for s in config.sinks}
        dead = store.dead_letter_counts()
        last_dead = store.last_dead_letters()
        sinks = []
        for cursor in store.cursors():
            reason, failed_at = last_dead.get(cursor.sink, (None, None))
            sinks.append(
                {
                    "name": cursor.sink,
                    "type": getattr(configured.get(cursor.sink), "type", None),
                    "configured": cursor.sink in configured,
                    "cursor": cursor.seq,
                    # Rows enqueued for another sink only (a backfill, a replay) are not its backlog.
                    "backlog": store.count_for_sink(cursor.sink, cursor.seq, high),
                    "delivered": cursor.delivered,
                    "dead_letters": dead.get(cursor.sink, 0),
                    "last_dead_letter_reason": redact(reason) if reason else None,
                    "last_dead_letter_at": _iso(failed_at),
                    "filtered": cursor.filtered,
                    "last_success_at": _iso(cursor.last_success_at),
                    "last_error": redact(cursor.last_error) if cursor.last_error else None,
                    "last_error_at": _iso(cursor.last_error_at),
                    "stopped": redact(cursor.stopped_reason) if cursor.stopped_reason else None,
                }
            )
        raw_pass = store.meta(LAST_PASS_KEY)
        last_pass = None
        if raw_pass:
            record = PassRecord.from_dict(json.loads(raw_pass))
            last_pass = {
                **record.as_dict(),
                "started_at": _iso(record.started_at),
                "finished_at": _iso(record.finished_at),
                "seconds": round(record.finished_at - record.started_at, 3),
            }
        open_jobs = store.open_run_stats()
        backfills = [
            {
                "name": b.name,
                "kind": b.name.split(" ", 1)[0],  # backfill, or replay (the re-export part of replay --since)
                "team_id": b.team_id,
                "since": b.since,
                "until": b.until,
                "sink": b.sink,
                "position": b.position,
                "events": b.events,
                "started_at": _iso(b.started_at),
                "updated_at": _iso(b.updated_at),
                "finished_at": _iso(b.finished_at),
            }
            for b in store.backfills()
        ]
        return {
            "state_path": config.state.path,
            "initialized": True,
            "writer": holder_of(config.state.path),
            "last_pass": last_pass,
            "checkpoints": store.checkpoints(),
            "open_jobs": {**open_jobs, "next_check_at": _iso(open_jobs["next_check_at"])},
            "outbox": {"events": store.outbox_size(), "first_seq": low, "last_seq": high},
            "sinks": sinks,
            "backfills": backfills,
            **({"dead_letters": letters} if dead_letters else {}),
        }


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args)
    data = status_data(config, dead_letters=args.dead_letters)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return exitcodes.OK
    if sys.stdout.isatty():
        from exporter.status_view import render

        render(data, dead_letters=args.dead_letters)
        return exitcodes.OK
    print(f"state: {data['state_path']}")
    if not data["initialized"]:
        print("no state yet: the exporter has not run with this config (status fills in after the first pass)")
        return exitcodes.OK
    print(f"writer: {data['writer'] or 'none running'}")
    last = data["last_pass"]
    if last is None:
        print("last pass: none recorded yet")
    else:
        detail = f"{last['events']} event(s), {last['requests']} request(s), {last['seconds']:g}s"
        print(
            f"last pass: {last['outcome']} at {last['finished_at']} ({detail})"
            + (f": {last['error']}" if last["error"] else "")
        )
    for team, checkpoint in data["checkpoints"].items():
        print(f"checkpoint: team {team}: Jobs created up to {checkpoint} read")
    open_jobs = data["open_jobs"]
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(open_jobs["by_status"].items())) or "none"
    print(f"open jobs: {open_jobs['open']} ({by_status}); oldest created {open_jobs['oldest_created_at'] or '-'}")
    print(f"outbox: {data['outbox']['events']} event(s) held")
    print(f"{'sink':<16} {'backlog':>8} {'delivered':>10} {'dead':>6}  last error")
    for sink in data["sinks"]:
        note = (sink["stopped"] and f"STOPPED: {sink['stopped']}") or sink["last_error"] or "-"
        if sink["dead_letters"]:
            note += f"; last dead letter: {sink['last_dead_letter_reason']}"
        if not sink["configured"]:
            note = "(no longer configured) " + note
        print(f"{sink['name']:<16} {sink['backlog']:>8} {sink['delivered']:>10} {sink['dead_letters']:>6}  {note}")
    for item in data["backfills"]:
        state = f"finished {item['finished_at']}" if item["finished_at"] else "not finished (run it again)"
        target = item["sink"] or "every sink"
        print(
            f"{item['kind']}: team {item['team_id']} {item['since']} .. {item['until']} to {target}: "
            f"read up to {item['position'] or '-'}, {item['events']} event(s), {state}"
        )
    if args.dead_letters:
        print(f"dead letters: {len(data['dead_letters'])} (re-send with: duvo-exporter replay)")
        for letter in data["dead_letters"]:
            print(f"  {letter['sink']}  {letter['run_id']}  {letter['failed_at']}  {letter['reason']}")
    return exitcodes.OK


def cmd_replay(args: argparse.Namespace) -> int:
    from exporter.delivery.worker import replay_dead_letters
    from exporter.state.lock import StateLock
    from exporter.state.store import StateStore
    from sinks.registry import build_sink

    config = _load(args)
    if args.since is not None:
        from exporter.delivery.replay_window import run_replay_since

        if args.dead_letters:
            raise UsageError("replay: --since re-sends a window; --dead-letters re-sends the dead letters: pick one")
        if args.sink is None:
            raise UsageError("replay --since needs --sink NAME: a window is re-sent to one sink")
        since = _moment(args.since, "--since", timestamps.now())
        _enabled_sink(config, args.sink)
        return run_replay_since(config, args.sink, since, _error)
    targets = [s for s in config.sinks if args.sink in (None, s.name)]
    if args.sink and not targets:
        raise UsageError(f"no sink named {args.sink!r} in the config")
    code = exitcodes.OK
    with StateStore(config.state.path, create=False) as store, StateLock(config.state.path, "replay"):
        for settings in targets:
            if not store.dead_letters(settings.name):
                continue
            sink = build_sink(settings)
            try:
                delivered, still, error = replay_dead_letters(sink, settings, store)
            finally:
                sink.close()
            print(
                f"sink {settings.name}: {delivered} delivered, {still} rejected again"
                + (f", stopped: {error}" if error else "")
            )
            if error:
                code = exitcodes.SINK
            elif still and code == exitcodes.OK:
                code = exitcodes.DEAD_LETTERS
    return code


def cmd_backfill(args: argparse.Namespace) -> int:
    from exporter.source.backfill import BackfillPlan, run_backfill

    config = _load(args)
    now = timestamps.now()
    since = _moment(args.since, "--since", now)
    until = _moment(args.until, "--until", now) if args.until is not None else None
    if until is not None and until <= since:
        raise UsageError(
            f"--until ({timestamps.format_utc(until)}) must be after --since ({timestamps.format_utc(since)})"
        )
    _enabled_sink(config, args.sink)
    plan = BackfillPlan(
        since=timestamps.format_utc(since),
        until=timestamps.format_utc(until) if until is not None else None,
        sink=args.sink,
        restart=args.restart,
    )
    return run_backfill(config, plan, _error)


def cmd_reset_sink(args: argparse.Namespace) -> int:
    from exporter.delivery.cursor_moves import CursorMove, reset_sink
    from exporter.state.lock import StateLock
    from exporter.state.store import StateStore

    config = _load(args)
    to = _moment(args.to, "--to", timestamps.now()).timestamp()

    def confirm(move: CursorMove) -> bool:
        if args.yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError("reset-sink: not moved: confirm on a terminal, or pass --yes in scripts")
        return input(f"move the cursor of sink {move.sink}? [y/N] ").strip().lower() in ("y", "yes")

    with (
        StateStore(config.state.path, synchronous=config.state.synchronous, create=False) as store,
        StateLock(config.state.path, "reset-sink"),
    ):
        known = [cursor.sink for cursor in store.cursors()]
        if args.name not in known:
            raise UsageError(f"reset-sink: no sink named {args.name!r} in the state (sinks: {', '.join(known)})")
        if reset_sink(store, args.name, to, confirm) is None:
            _error("reset-sink: not confirmed; the cursor was not moved")
            return exitcodes.CONFIG
    return exitcodes.OK


def cmd_demo(args: argparse.Namespace) -> int:
    from exporter.demo import run_demo

    return run_demo(args)


def cmd_simulate(args: argparse.Namespace) -> int:
    from exporter.simulator import Simulator, SimulatorOptions, serve_forever

    try:
        options = SimulatorOptions(
            seed=args.seed,
            jobs_per_second=args.jobs_per_second,
            late_fraction=args.late_fraction,
            time_scale=args.time_scale,
            backfill=args.backfill,
            requests_per_minute=args.requests_per_minute or None,
        )
    except ValueError as exc:
        raise UsageError(f"simulate: {exc}") from None

    def announce(simulator: Simulator) -> None:
        print(f"Duvo API simulator on {simulator.url} (API key dv_sim_key, team team-sim)", flush=True)

    try:
        serve_forever(options, "127.0.0.1", args.port, on_ready=announce)
    except OSError as exc:
        raise UsageError(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}") from None
    return exitcodes.OK


# ---- parsing -----------------------------------------------------------------------------------


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    from datetime import UTC, datetime

    from transport import timestamps

    return timestamps.format_utc(datetime.fromtimestamp(epoch, tz=UTC))


def _moment(text: str, option: str, now: datetime) -> datetime:
    from exporter.moments import parse_moment

    try:
        return parse_moment(text, now)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _enabled_sink(config: Config, name: str | None) -> None:
    """A --sink NAME must be a sink of the config that is enabled (exit 2 otherwise)."""
    if name is None:
        return
    found = [s for s in config.sinks if s.name == name]
    if not found:
        names = ", ".join(s.name for s in config.sinks)
        raise UsageError(f"--sink: no sink named {name!r} in the config (sinks: {names})")
    if not found[0].enabled:
        raise UsageError(f"--sink: sink {name!r} is disabled in the config")


def _error(message: str) -> None:
    print(f"duvo-exporter: error: {redact(message)}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    logging_options = argparse.ArgumentParser(add_help=False)
    logging_options.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default: info (warning for demo, which prints its own progress)",
    )
    # Defaults from the environment suit containers; argparse checks choices only on the command
    # line, so main() reports a bad value from there.
    logging_options.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("DUVO_EXPORTER_LOG_FORMAT") or "auto",
        help="json lines, or console text for people (default: $DUVO_EXPORTER_LOG_FORMAT, else auto: "
        "console when stderr is a terminal, json otherwise)",
    )
    logging_options.add_argument(
        "--library-log-level",
        choices=["debug", "info", "warning", "error"],
        default=os.environ.get("DUVO_EXPORTER_LIBRARY_LOG_LEVEL") or None,
        help="level of third-party libraries' logs (urllib3, apscheduler, ...), apart from --log-level "
        "(default: $DUVO_EXPORTER_LIBRARY_LOG_LEVEL, else warning, or --log-level if stricter)",
    )
    common = argparse.ArgumentParser(add_help=False, parents=[logging_options])
    common.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        help=f"YAML config file (default: $DUVO_EXPORTER_CONFIG, else {DEFAULT_CONFIG})",
    )
    parser = argparse.ArgumentParser(
        prog="duvo-exporter",
        description="Export Duvo Jobs to Datadog Logs, Splunk HEC, Grafana Loki and files, durably.",
        epilog=exitcodes.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"duvo-exporter {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    def add(
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help_text: str,
        parents: Sequence[argparse.ArgumentParser] = (common,),
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=list(parents),
            help=help_text,
            description=help_text,
            epilog=exitcodes.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    add("run", cmd_run, "run the daemon: a pass at start and then on schedule; sinks deliver continuously")
    once = add("once", cmd_once, "one pass, deliver the backlog to every sink, exit (for cron and Kubernetes CronJobs)")
    once.add_argument(
        "--dead-letter-exit-code",
        type=int,
        default=exitcodes.DEAD_LETTERS,
        choices=range(256),
        metavar="CODE",
        help=f"exit code when a backend rejected events permanently (default {exitcodes.DEAD_LETTERS}; "
        "0 accepts dead letters as success)",
    )
    check = add("check", cmd_check, "validate the configuration; with --connect also try the Duvo key and every sink")
    check.add_argument("--connect", action="store_true", help="also contact the Duvo API and every sink")
    status = add(
        "status",
        cmd_status,
        "show checkpoints, open Jobs, backlog and last error per sink, and backfills (tables on a terminal)",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output (the same on a terminal)")
    status.add_argument(
        "--dead-letters", action="store_true", help="also list each dead-lettered event with the backend's reason"
    )
    replay = add(
        "replay",
        cmd_replay,
        "send dead-lettered events again (after fixing what the backend rejected); with --since, "
        "send one sink again everything since a time",
    )
    replay.add_argument(
        "--dead-letters", action="store_true", help="replay the dead letters (the default; accepted for scripts)"
    )
    replay.add_argument(
        "--sink", metavar="NAME", help="only this sink's dead letters; with --since, the one sink to re-send to"
    )
    replay.add_argument(
        "--since",
        metavar="T",
        help="re-send to --sink the events enqueued since T that are still in the outbox, and re-export from the "
        "API the Jobs created since T that are not (RFC 3339 or a duration back from now: 24h, 7d); other sinks "
        "are unaffected",
    )
    reset = add(
        "reset-sink",
        cmd_reset_sink,
        "move one sink's delivery cursor to a time: back re-sends what the outbox holds, forward skips",
    )
    reset.add_argument("name", metavar="NAME", help="the sink whose cursor moves (as named in the config)")
    reset.add_argument(
        "--to",
        required=True,
        metavar="T",
        help="the first event enqueued at or after T is the next one sent (RFC 3339 or a duration back from now)",
    )
    reset.add_argument(
        "--yes", "-y", action="store_true", help="do not ask for confirmation (needed when stdin is not a terminal)"
    )
    backfill = add(
        "backfill",
        cmd_backfill,
        "export the Jobs created in a past window (resumable; never moves the live checkpoint)",
    )
    backfill.add_argument(
        "--since",
        required=True,
        metavar="T",
        help="window start: RFC 3339 (2026-11-01T00:00:00Z) or a duration back from now (24h, 7d)",
    )
    backfill.add_argument(
        "--until",
        metavar="T",
        help="window end, exclusive (same forms; default: when this backfill first started)",
    )
    backfill.add_argument("--sink", metavar="NAME", help="send to this sink only (default: every enabled sink)")
    backfill.add_argument(
        "--restart",
        action="store_true",
        help="list the window again from its start, even if this backfill ran (or finished) before",
    )
    demo = add("demo", cmd_demo, "run the exporter against the embedded Duvo simulator (no credentials needed)")
    demo.add_argument("--duration", type=float, default=20.0, metavar="SECONDS", help="how long to run (default 20)")
    demo.add_argument("--output", metavar="PATH", help="where the file sink writes (default: the demo config's)")
    sim = add(
        "simulate", cmd_simulate, "serve the Duvo API simulator alone on 127.0.0.1", parents=(logging_options,)
    )
    sim.add_argument("--port", type=int, default=8787, help="TCP port on 127.0.0.1 (default 8787)")
    sim.add_argument(
        "--seed", type=int, default=1, help="seed for Job ids, Assignments and lifecycles: same seed, same Jobs"
    )
    sim.add_argument(
        "--jobs-per-second", type=float, default=2.0, metavar="RATE", help="new Jobs created per second (default 2)"
    )
    sim.add_argument(
        "--late-fraction", type=float, default=0.3, help="share of Jobs that finish much later (default 0.3)"
    )
    sim.add_argument(
        "--time-scale",
        type=float,
        default=60.0,
        help="simulated seconds per real second for Job lifecycles (default 60)",
    )
    sim.add_argument(
        "--backfill",
        type=int,
        default=500,
        metavar="JOBS",
        help="Jobs already there when the simulator starts, created over the day before (default 500)",
    )
    sim.add_argument("--requests-per-minute", type=int, default=300, help="per-key rate limit (0 = none; default 300)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.log_level = args.log_level or ("warning" if args.command == "demo" else "info")
    try:
        configure_logging(args.log_level, log_format=args.log_format, library_level=args.library_log_level)
    except ValueError as exc:
        parser.error(f"{exc} (check $DUVO_EXPORTER_LOG_FORMAT and $DUVO_EXPORTER_LIBRARY_LOG_LEVEL)")
    try:
        return args.handler(args)
    except BrokenPipeError:
        # The reader went away (`status --json | head`): nothing is wrong with the exporter. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return exitcodes.OK
    except ConfigError as exc:
        for problem in exc.problems:
            _error(problem)
        return exitcodes.CONFIG
    except UsageError as exc:
        _error(str(exc))
        return exitcodes.CONFIG
    except StateError as exc:
        _error(str(exc))
        return exitcodes.STATE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: one line, no traceback unless asked
        if args.log_level == "debug":
            log.exception("internal error")
        _error(f"internal error: {type(exc).__name__}: {exc}")
        return exitcodes.INTERNAL


if __name__ == "__main__":
    sys.exit(main())
