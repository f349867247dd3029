"""Exporter: wires config -> Duvo client -> extraction -> outbox -> one SinkWorker per sink."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import structlog

from exporter import __version__
from exporter.config import Config
from exporter.delivery.worker import SinkWorker
from exporter.source.duvo_client import DuvoClient
from exporter.source.extraction import DuvoSource, Extractor, PassReport
from exporter.state.lock import StateLock
from exporter.state.pass_record import LAST_PASS_KEY, PassRecord
from exporter.state.store import StateError, StateStore
from sinks.base import Sink
from sinks.registry import build_sink
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
            self._threads: list[threading.Thread] = []
        except BaseException:
            self.store.close()
            self._lock.release()
            raise

    # ---- extraction --------------------------------------------------------------------------

    def extract(self, stop: threading.Event | None = None) -> PassReport:
        started = time.time()
        try:
            report = self.extractor.run_pass(stop)
        except StateError:
            raise  # nothing can be recorded in a state that cannot be written
        except Exception as exc:
            self._record_pass(PassRecord.failed(started, exc))
            raise
        self._record_pass(PassRecord.finished(started, report))
        log.info(
            "pass finished",
            events=report.events,
            runs_seen=report.runs_seen,
            requests=report.requests,
            sweep_pages=report.sweep_pages,
            sweeps_incomplete=report.sweeps_incomplete,
            rechecked=report.rechecked,
            halted=report.halted,
        )
        for event in self.wake.values():
            event.set()
        return report

    def _record_pass(self, record: PassRecord) -> None:
        """What `status` and the readiness check report as the last pass; never fails the pass."""
        try:
            self.store.set_meta(LAST_PASS_KEY, record.as_dict())
        except StateError as exc:
            log.warning("could not record the pass in the state file", error=str(exc))

    # ---- delivery ----------------------------------------------------------------------------

    def drain(self, stop: threading.Event) -> dict[str, str]:
        """Deliver every sink's backlog in parallel (for `once`); sink name -> outcome."""
        outcomes: dict[str, str] = {}

        def drain_one(worker: SinkWorker) -> None:
            try:
                outcomes[worker.name] = worker.drain(stop)
            except Exception as exc:
                log.exception("delivery failed unexpectedly", sink=worker.name, error=str(exc))
                outcomes[worker.name] = "backlog"

        threads = [threading.Thread(target=drain_one, args=(w,), name=f"sink-{w.name}") for w in self.workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outcomes

    def start_workers(self, stop: threading.Event) -> None:
        for worker in self.workers:
            thread = threading.Thread(
                target=worker.run, args=(stop, self.wake[worker.name]), name=f"sink-{worker.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def join_workers(self, timeout: float) -> None:
        for event in self.wake.values():
            event.set()
        for thread in self._threads:
            thread.join(timeout)

    def close(self) -> None:
        for worker in self.workers:
            worker.sink.close()
            worker.store.close()
        if self._owned_client:
            self.source.close()
        self.store.close()
        self._lock.release()
