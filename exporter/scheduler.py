"""run_daemon: a pass at start and then on schedule (APScheduler 3), sinks delivering in between,
and a graceful stop on SIGTERM/SIGINT within 10 s with the state consistent."""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime
from types import FrameType

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from exporter import exitcodes
from exporter.config import ScheduleSettings
from exporter.pipeline import Exporter
from exporter.source.duvo_client import DuvoAuthError, DuvoError
from exporter.state.store import StateError

log = structlog.get_logger(__name__)

STOP_GRACE_SECONDS = 8.0  # inside the 10 s a container runtime usually grants after SIGTERM


def install_stop_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT asks for a graceful stop; a second SIGINT exits at once."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def trigger_for(schedule: ScheduleSettings) -> IntervalTrigger | CronTrigger:
    if schedule.cron:
        return CronTrigger.from_crontab(schedule.cron, timezone=UTC)
    return IntervalTrigger(seconds=schedule.interval_seconds or 300, timezone=UTC)


def run_daemon(exporter: Exporter, schedule: ScheduleSettings, stop: threading.Event) -> int:
    exit_code = exitcodes.OK
    pass_done = threading.Event()
    pass_done.set()

    def extraction_pass() -> None:
        nonlocal exit_code
        if stop.is_set():
            return
        pass_done.clear()
        try:
            exporter.extract(stop)
        except DuvoAuthError as exc:
            # Retrying a rejected key only hammers the API: stop and say so.
            log.error("Duvo API rejected the key; stopping", error=str(exc))
            exit_code = exitcodes.DUVO_AUTH
            stop.set()
        except StateError as exc:
            log.error("state store failed; stopping", error=str(exc))
            exit_code = exitcodes.STATE
            stop.set()
        except DuvoError as exc:
            log.error("pass failed; will try again at the next scheduled pass", error=str(exc))
        except Exception as exc:
            log.exception("pass failed unexpectedly; will try again at the next scheduled pass", error=str(exc))
        finally:
            pass_done.set()

    scheduler = BackgroundScheduler(
        timezone=UTC,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
    )
    scheduler.add_job(
        extraction_pass, trigger_for(schedule), id="extract", name="extract", next_run_time=datetime.now(UTC)
    )
    server = None
    if exporter.config.server.listen:
        from exporter.server.app import start_server

        server = start_server(exporter)  # ServerError (exit 2) before anything else started
    exporter.start_workers(stop)
    scheduler.start()
    log.info(
        "running",
        schedule=schedule.cron or schedule.every,
        sinks=exporter.sink_names,
        teams=exporter.config.duvo.team_ids,
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        scheduler.shutdown(wait=False)
        if not pass_done.wait(max(0.0, deadline - time.monotonic())):
            log.warning("pass still in a request at shutdown; its committed pages are kept")
        if server is not None:
            server.stop(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
        exporter.join_workers(max(0.1, deadline - time.monotonic()))
        log.info("stopped")
    return exit_code
