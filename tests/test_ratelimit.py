from exporter.ratelimit import TokenBucket


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
