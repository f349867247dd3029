"""Indexer acknowledgement for Splunk HEC: wait until Splunk confirms a batch was indexed.

With ``useACK`` on the token, every accepted POST answers ``{"text":"Success","code":0,"ackId":N}``
and the batch counts as delivered only once ``POST /services/collector/ack`` with
``{"acks":[N]}`` answers ``{"acks":{"N":true}}`` on the same channel. Splunk's own guidance for
ack clients: one GUID channel per client, poll regularly, resend what is not acknowledged within
a timeout. Waiting happens inside ``Sink.send`` (synchronously), so this is the one place a sink
sleeps: between polls, for ``ack_poll_interval``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import requests

from sinks.splitting import Kind, Verdict
from sinks.splunk_hec_answer import CHANNEL_CODES, TOKEN_CODES, HecAnswer
from transport.errors import describe_transport_error


class AckPoller:
    """Polls one channel's ackIds. Never raises for backend trouble: answers a Verdict."""

    def __init__(
        self,
        session: requests.Session,
        url: str,
        *,
        timeout: float,
        poll_interval: float,
        request_timeout: float,
        verify: bool | str,
        where: str,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._url = url
        self._timeout = timeout
        self._interval = poll_interval
        self._request_timeout = request_timeout
        self._verify = verify
        self._where = where
        self._sleep = sleep
        self._clock = clock

    def wait(self, ack_id: int) -> Verdict:
        """OK once ``ack_id`` is acknowledged; RETRY (resend the batch) if it is not within the
        timeout; FATAL if Splunk refuses the token or the channel while polling."""
        deadline = self._clock() + self._timeout
        last = "Splunk has not confirmed indexing yet"
        while True:
            acked, verdict, problem = self._poll(ack_id)
            if acked:
                return Verdict(Kind.OK)
            if verdict is not None:
                return verdict
            if problem:
                last = problem
            remaining = deadline - self._clock()
            if remaining <= 0:
                return Verdict(
                    Kind.RETRY,
                    f"Splunk HEC did not acknowledge the batch (ackId {ack_id}) within "
                    f"{self._where}.ack_timeout={self._timeout:g}s ({last}); it will be sent again",
                )
            self._sleep(min(self._interval, remaining))

    def _poll(self, ack_id: int) -> tuple[bool, Verdict | None, str | None]:
        try:
            response = self._session.post(
                self._url,
                json={"acks": [ack_id]},
                timeout=self._request_timeout,
                verify=self._verify,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            return False, None, f"ack poll failed: {describe_transport_error(exc, self._url, service='Splunk HEC')}"
        answer = HecAnswer.parse(response)
        if response.status_code == 200:
            if answer.acks is None:
                return False, None, f"ack poll answer without acks ({answer.label()})"
            # Splunk keys the statuses by the ackId as a string: {"acks": {"0": true}}.
            return answer.acks.get(str(ack_id)) is True, None, None
        if answer.code in TOKEN_CODES or response.status_code in (401, 403):
            return (
                False,
                Verdict(Kind.FATAL, f"Splunk HEC rejected the token ({answer.label()}): check {self._where}.token"),
                None,
            )
        if answer.code == 14:  # "ACK is disabled": the token's useACK was turned off meanwhile
            return (
                False,
                Verdict(
                    Kind.FATAL,
                    f"Splunk HEC answered the ack poll with ({answer.label()}): the token does not use "
                    f"indexer acknowledgement; set {self._where}.ack: false or enable it on the token",
                ),
                None,
            )
        if answer.code in CHANNEL_CODES:
            return (
                False,
                Verdict(
                    Kind.FATAL,
                    f"Splunk HEC refused the ack channel ({answer.label()}): a proxy may drop the "
                    "X-Splunk-Request-Channel header",
                ),
                None,
            )
        # Busy, 5xx, 429 or a proxy hiccup: the ackId stays valid on the server, keep polling.
        return False, None, f"ack poll answered {answer.label()}"
