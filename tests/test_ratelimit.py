from transport.ratelimit import TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_spends_at_the_configured_rate_after_the_burst():
    t = FakeTime()
    bucket = TokenBucket(rate=4.0, burst=2.0, clock=t.clock, sleep=t.sleep)
    for _ in range(2 + 40):
        bucket.acquire()
    assert abs(t.now - 10.0) < 1e-9  # 40 tokens at 4/s after a burst of 2


def test_pause_blocks_and_forgets_the_burst():
    t = FakeTime()
    bucket = TokenBucket(rate=1.0, burst=5.0, clock=t.clock, sleep=t.sleep)
    bucket.pause(30)
    bucket.acquire()
    assert t.now >= 30
    start = t.now
    bucket.acquire()
    assert t.now - start >= 0.99  # no saved burst after a pause


def test_retry_after_seconds_and_http_dates():
    from datetime import UTC, datetime

    from transport.ratelimit import retry_after_seconds

    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7", lambda: now) == 7.0
    assert retry_after_seconds(" 1.5 ", lambda: now) == 1.5
    assert retry_after_seconds("Sat, 28 Nov 2026 12:00:30 GMT", lambda: now) == 30.0
    assert retry_after_seconds("Sat, 28 Nov 2026 11:59:00 GMT", lambda: now) == 0.0  # in the past
    for garbage in (None, "", "soon", "-3", "nan", "inf"):
        assert retry_after_seconds(garbage, lambda: now) is None


def test_no_60s_window_exceeds_requests_per_minute():
    """The API counts a sliding 60 s window: the bucket's burst must fit inside the budget."""
    from bisect import bisect_left

    from exporter.source.duvo_client import DuvoClient

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    client = DuvoClient(
        "http://127.0.0.1:9/v2", "dv_test", requests_per_minute=3000, sleep=sleep, clock=lambda: now[0]
    )
    grants = []
    while now[0] < 120:
        client.bucket.acquire()
        grants.append(now[0])
    worst = max(bisect_left(grants, t + 60) - i for i, t in enumerate(grants))
    assert worst <= 3000, f"{worst} requests in one 60 s window"
    assert worst >= 0.95 * 3000  # and the budget is still used
