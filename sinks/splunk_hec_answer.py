"""Reading a Splunk HEC answer: the JSON ``{"text": ..., "code": N}`` body behind every status.

HEC's status codes (Splunk "Troubleshoot HTTP Event Collector"; the same table ships as
SplunkAdmins' splunkadmins_hec_reply_code_lookup.csv):

    0 200 Success                     9  503 Server is busy
    1 403 Token disabled              10 400 Data channel is missing
    2 401 Token is required           11 400 Invalid data channel
    3 401 Invalid authorization       12 400 Event field is required
    4 403 Invalid token               13 400 Event field cannot be blank
    5 400 No data                     14 400 ACK is disabled
    6 400 Invalid data format         15 400 Error in handling indexed fields
    7 400 Incorrect index             16 400 Query string authorization is not enabled
    8 500 Internal server error       17 200 HEC is healthy
    18/19/20 503 HEC is unhealthy (queues full / ack service unavailable)
    21/22 400 Invalid token / Token disabled
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests

from sinks.base import one_line
from transport.ratelimit import retry_after_seconds

TOKEN_CODES = frozenset({1, 2, 3, 4, 21, 22})
CHANNEL_CODES = frozenset({10, 11})
INDEX_CODE = 7
# Codes about the data itself. For a batch HEC adds `invalid-event-number`: the zero-based
# position of the first event it refused.
EVENT_CODES = frozenset({5, 6, 12, 13, 15})
BUSY_CODES = frozenset({8, 9, 18, 19, 20})
NO_DATA_CODE = 5
HEALTHY_CODE = 17


@dataclass(frozen=True)
class HecAnswer:
    status: int
    reason: str
    code: int | None = None
    text: str | None = None
    invalid_event: int | None = None
    ack_id: int | None = None
    acks: dict[str, Any] | None = None
    retry_after: float | None = None
    location: str | None = None

    @classmethod
    def parse(cls, response: requests.Response) -> HecAnswer:
        body: Any = None
        try:
            body = json.loads(response.content) if response.content else None
        except ValueError:
            body = None  # a proxy's HTML page: its words are not HEC's, and are not quoted
        fields: dict[str, Any] = body if isinstance(body, dict) else {}
        acks = fields.get("acks")
        return cls(
            status=response.status_code,
            reason=one_line(response.reason or "", 200),
            code=_int(fields.get("code")),
            text=one_line(str(fields["text"]), 200) if isinstance(fields.get("text"), str) else None,
            invalid_event=_int(fields.get("invalid-event-number")),
            ack_id=_int(fields.get("ackId")),
            acks=acks if isinstance(acks, dict) else None,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            location=one_line(response.headers["Location"], 200) if response.headers.get("Location") else None,
        )

    def label(self) -> str:
        """``403, code 4 Invalid token`` — or ``502 Bad Gateway`` when the body is not HEC's."""
        if self.code is not None:
            return f"{self.status}, code {self.code} {self.text or ''}".rstrip()
        return f"{self.status} {self.reason}".rstrip()


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    return retry_after_seconds(value)
