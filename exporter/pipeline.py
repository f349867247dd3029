"""Exporter: wires config -> Duvo client -> extraction -> outbox -> one SinkWorker per sink."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from exporter import __version__
from exporter.config import Config
from exporter.delivery.worker import SinkWorker, drain_workers
from exporter.insights.engine import InsightEngine
from exporter.observe import NULL_OBSERVER, Observer
from exporter.source.duvo_client import DuvoClient
from exporter.source.extraction import DuvoSource, Extractor, PassReport
from exporter.source.message_log import Diagnoser
from exporter.source.webhook_queue import WebhookProcessor
from exporter.state.lock import StateLock
from exporter.state.pass_record import LAST_PASS_KEY, PassRecord
from exporter.state.store import StateError, StateStore
from exporter.transform import events as run_events
from sinks.base import Sink
from sinks.registry import build_sink
from sinks.settings import SinkSettings
from transport.durations import parse_duration

log = structlog.get_logger(__name__)


def build_client(config: Config) -> DuvoClient:
    duvo = config.duvo
    return DuvoClient(
        duvo.base_url,
        duvo.api_key.get_secret_value(),
        requests_per_minute=duvo.requests_per_minute,
        connect_timeout=duvo.connect_timeout,
        read_timeout=duvo.read_timeout,
        max_attempts=duvo.max_attempts,
        user_agent=f"duvo-exporter/{__version__}",
        verify=duvo.tls.requests_verify(),
    )


def insight_targets(sinks: Sequence[SinkSettings]) -> dict[str, list[str]]:
    """run.summary / alert.* -> the sinks that ask for it in filter.events (no filter: none)."""
    targets: dict[str, list[str]] = {}
    for sink in sinks:
        for kind in sink.filter.events or ():
            if kind in run_events.INSIGHT_EVENTS:
                targets.setdefault(kind, []).append(sink.name)
    return targets


class Exporter:
    def __init__(
        self,
        config: Config,
        *,
        source: DuvoSource | None = None,
        sinks: Mapping[str, Sink] | None = None,
        command: str = "run",
    ) -> None:
        self.config = config
        self.store = StateStore(config.state.path, synchronous=config.state.synchronous)
        try:
            self._lock = StateLock(config.state.path, command).acquire()
        except StateError:
            self.store.close()
            raise
        try:
            self._owned_client = source is None
            self.source: Any = source or build_client(config)
            enabled = [s for s in config.sinks if s.enabled]
            self.sink_names = [s.name for s in enabled]
            self.store.ensure_cursors(self.sink_names)
            self.extractor = Extractor(
                self.source,
                self.store,
                config.duvo.team_ids,
                config.extract,
                page_size=config.duvo.page_size,
                start_from=config.duvo.start_from,
                max_outbox_events=config.state.max_outbox_events,
                seen_retention=parse_duration(config.state.seen_retention),
            )
            # One diagnosis budget for the pass and the webhook thread (README "Diagnosis").
            self.diagnoser: Diagnoser | None = None
            if config.diagnose.enabled and hasattr(self.source, "list_messages"):
                self.diagnoser = Diagnoser(
                    self.source,
                    config.diagnose,
                    budget=config.diagnosis_budget(),
                    seconds=config.diagnosis_seconds(),
                    page_size=config.duvo.page_size,
                )
                self.extractor.diagnoser = self.diagnoser
            built = dict(sinks) if sinks is not None else {s.name: build_sink(s) for s in enabled}
            self.workers = [
                SinkWorker(
                    built[s.name],
                    s,
                    StateStore(config.state.path, synchronous=config.state.synchronous),
                    self.sink_names,
                )
                for s in enabled
            ]
            self.wake = {w.name: threading.Event() for w in self.workers}
            # With insights off it only prunes the facts every run.finished still records.
            self.insights = InsightEngine(self.store, config.insights, insight_targets(enabled))
            self._threads: list[threading.Thread] = []
            self.observer: Observer = NULL_OBSERVER
            # Webhooks queued by the server (or left by a previous run) are fetched and exported by
            # a processor with its own connection, sharing the pass's commit lock.
            self.webhooks: WebhookProcessor | None = None
            self._webhook_thread: threading.Thread | None = None
            if config.webhooks is not None:
                webhook_store = StateStore(config.state.path, synchronous=config.state.synchronous)
                self.webhooks = WebhookProcessor(
                    Extractor(
                        self.source,
                        webhook_store,
                        config.duvo.team_ids,
                        config.extract,
                        page_size=config.duvo.page_size,
                        start_from=config.duvo.start_from,
                        max_outbox_events=config.state.max_outbox_events,
                        seen_retention=parse_duration(config.state.seen_retention),
                        commit_lock=self.extractor.commit_lock,
                    ),
                    webhook_store,
                    config.duvo.team_ids,
                )
                self.webhooks.extractor.diagnoser = self.diagnoser
                self.webhooks.on_exported = self._wake_sinks
        except BaseException:
            self.store.close()
            self._lock.release()
            raise

    def set_observer(self, observer: Observer) -> None:
        """Report requests, passes, deliveries and webhooks to ``observer`` (the server's metrics)."""
        self.observer = observer
        if hasattr(self.source, "observer"):
            self.source.observer = observer
        for worker in self.workers:
            worker.observer = observer
        if self.webhooks is not None:
            self.webhooks.observer = observer

    def set_recheck_floor(self, floor: Callable[[], float]) -> None:
        """With webhooks flowing, the age schedule re-checks open Jobs at most every ``floor()`` s."""
        self.extractor.recheck_floor = floor
        if self.webhooks is not None:
            self.webhooks.extractor.recheck_floor = floor

    # ---- extraction --------------------------------------------------------------------------

    def extract(self, stop: threading.Event | None = None) -> PassReport:
        started = time.time()
        self._process_webhooks(stop)
        try:
            report = self.extractor.run_pass(stop)
        except StateError:
            raise  # nothing can be recorded in a state that cannot be written
        except Exception as exc:
            self._record_pass(PassRecord.failed(started, exc))
            self.observer.pass_finished("failed", time.time() - started)
            self._evaluate_insights()  # what the pass committed before failing counts
            raise
        record = PassRecord.finished(started, report)
        self._record_pass(record)
        self._evaluate_insights()
        self.observer.pass_finished(record.outcome, record.finished_at - record.started_at)
        self.observer.jobs_extracted(report.events)
        log.info(
            "pass finished",
            events=report.events,
            runs_seen=report.runs_seen,
            requests=report.requests,
            sweep_pages=report.sweep_pages,
            sweeps_incomplete=report.sweeps_incomplete,
            rechecked=report.rechecked,
            diagnosis_requests=report.diagnosis_requests,
            held_for_diagnosis=report.held,
            halted=report.halted,
        )
        self._wake_sinks()
        return report

    def _evaluate_insights(self) -> None:
        """Summaries and alerts, after the pass committed (exporter/insights). A failure here is
        logged and never fails the pass; a state that cannot be written stops as everywhere."""
        try:
            result = self.insights.evaluate()
        except StateError:
            raise
        except Exception as exc:
            log.exception("could not evaluate the insights", error=str(exc))
            return
        if result.summaries or result.started or result.cleared:
            log.info(
                "insights evaluated",
                summaries=result.summaries,
                alerts_started=result.started,
                alerts_cleared=result.cleared,
            )

    def release_held(self) -> int:
        """Enqueue every event held for its diagnosis now, without waiting for another pass:
        diagnosed while this pass's budget lasts, else with ``diagnosis.state: unavailable``."""
        released = self.extractor.release_held(PassReport(), held_before=float("inf"))
        self._wake_sinks()
        return released

    def _wake_sinks(self) -> None:
        for event in self.wake.values():
            event.set()

    def _process_webhooks(self, stop: threading.Event | None) -> None:
        """Queued webhooks go first: in the daemon the processor thread is woken, otherwise
        (`once`) they are processed here, before the pass."""
        if self.webhooks is None:
            return
        if self._webhook_thread is not None:
            self.webhooks.wake.set()
            return
        try:
            self.webhooks.drain(stop)
        except StateError:
            raise
        except Exception as exc:
            log.warning("could not process queued webhooks; the pass finds those jobs anyway", error=str(exc))

    def _record_pass(self, record: PassRecord) -> None:
        """What `status` and the readiness check report as the last pass; never fails the pass."""
        try:
            self.store.set_meta(LAST_PASS_KEY, record.as_dict())
        except StateError as exc:
            log.warning("could not record the pass in the state file", error=str(exc))

    # ---- delivery ----------------------------------------------------------------------------

    def drain(self, stop: threading.Event) -> dict[str, str]:
        """Deliver every sink's backlog in parallel (for `once`); sink name -> outcome."""
        return drain_workers(self.workers, stop)

    def start_workers(self, stop: threading.Event) -> None:
        for worker in self.workers:
            thread = threading.Thread(
                target=worker.run, args=(stop, self.wake[worker.name]), name=f"sink-{worker.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        if self.webhooks is not None:
            self._webhook_thread = threading.Thread(
                target=self.webhooks.run, args=(stop,), name="webhooks", daemon=True
            )
            self._webhook_thread.start()
            self._threads.append(self._webhook_thread)

    def join_workers(self, timeout: float) -> None:
        for event in self.wake.values():
            event.set()
        if self.webhooks is not None:
            self.webhooks.wake.set()
        for thread in self._threads:
            thread.join(timeout)

    def close(self) -> None:
        for worker in self.workers:
            worker.sink.close()
            worker.store.close()
        if self.webhooks is not None:
            self.webhooks.store.close()
        if self._owned_client:
            self.source.close()
        self.store.close()
        self._lock.release()
