"""RPM/TPM limits: the schedule itself, and one limit shared by several Ray actors as seen by a real server."""

import asyncio
import time

import pytest

from sefl_ray.llm.ratelimit import Limit, RateLimiter, create_shared_rate_limiter


def test_requests_are_evenly_spaced_with_margin():
    limiter = RateLimiter({"a": Limit(rpm=60)}, safety_margin=0.02)
    delays = [limiter.reserve("a") for _ in range(4)]
    assert delays[0] == pytest.approx(0.0, abs=1e-3)
    for index, delay in enumerate(delays):
        assert delay == pytest.approx(index * 1.02, abs=0.01)
    assert limiter.reserve("unlimited") == 0.0


def test_tokens_per_minute_and_corrections():
    limiter = RateLimiter({"a": Limit(tpm=6000)}, safety_margin=0.0)
    assert limiter.reserve("a", tokens=100) == pytest.approx(0.0, abs=1e-3)
    assert limiter.reserve("a", tokens=100) == pytest.approx(1.0, abs=0.01)  # 100 tokens = 1 s of a 6000 TPM budget
    limiter.correct_tokens("a", -100)  # the second call used nothing after all: its slot comes back
    assert limiter.reserve("a", tokens=100) == pytest.approx(1.0, abs=0.01)


@pytest.mark.slow
def test_rpm_limit_shared_by_four_ray_actors(ray_session, loopback):
    """Eight callers in four actors, each of which alone could overrun the limit, share one. The server allows
    120 RPM counted as 20 requests per 10 s, a window the callers overrun in seconds: without the shared limiter,
    or with one letting twice the rate through, it refuses requests. The endpoint is set 5 % under the server's
    rate: a cold actor's first request can leave ~0.25 s after its slot here, which a 10 s window cannot absorb
    in the limiter's 2 % margin (a vendor's 60 s window can)."""
    from sefl_ray.config import RetryConfig
    from sefl_ray.llm.endpoint import EndpointConfig
    from sefl_ray.testing.loopback import LoopbackConfig

    ray = ray_session
    vendor_rpm, window_s, per_window = 120, 10.0, 20
    rpm, seconds = 114, 15.0
    loopback.config = LoopbackConfig(latency_s=0.01, rpm_limit=per_window, rpm_window_s=window_s)
    endpoint = EndpointConfig(name="loop", model="m", base_url=loopback.base_url, rpm=rpm)
    limiter = create_shared_rate_limiter({"loop": Limit(rpm=rpm)})

    @ray.remote(num_cpus=0.25)
    class Caller:
        async def run(self, endpoint, limiter, seconds):
            from sefl_ray.llm.client import EndpointCallFailed, EndpointClient

            client = EndpointClient(endpoint, RetryConfig(max_attempts=1), limiter=limiter)
            deadline = time.monotonic() + seconds
            outcomes = {"ok": 0, "failed": 0}

            async def worker():
                while time.monotonic() < deadline:
                    try:
                        await client.chat([{"role": "user", "content": "hi"}], max_tokens=4)
                        outcomes["ok"] += 1
                    except EndpointCallFailed:  # a refused request: counted, so the test says how many
                        outcomes["failed"] += 1

            await asyncio.gather(*(worker() for _ in range(2)))
            await client.close()
            return outcomes

    callers = [Caller.remote() for _ in range(4)]
    per_actor = ray.get([caller.run.remote(endpoint, limiter, seconds) for caller in callers])
    ray.kill(limiter)

    refused = loopback.rate_limited_count
    assert refused == 0 and sum(o["failed"] for o in per_actor) == 0, f"the server refused {refused} requests"
    most_in_a_window = loopback.max_in_window(window_s)
    assert most_in_a_window <= per_window, f"{most_in_a_window} requests in {window_s:.0f} s, limit {per_window}"
    assert loopback.count("ok") == sum(o["ok"] for o in per_actor)
    arrivals = sorted(r.arrived_at for r in loopback.requests)
    span = arrivals[-1] - arrivals[0]
    assert span > window_s, f"the calls spanned {span:.1f} s, less than one {window_s:.0f} s window"
    achieved_rpm = (len(arrivals) - 1) / span * 60
    assert 0.95 * rpm <= achieved_rpm <= vendor_rpm, f"{achieved_rpm:.1f} RPM for a limit of {rpm}"
    assert min(o["ok"] for o in per_actor) > 0, "every actor got a share"
