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
    from sefl_ray.config import RetryConfig
    from sefl_ray.llm.endpoint import EndpointConfig
    from sefl_ray.testing.loopback import LoopbackConfig

    ray = ray_session
    loopback.config = LoopbackConfig(latency_s=0.01, rpm_limit=60)
    endpoint = EndpointConfig(name="loop", model="m", base_url=loopback.base_url, rpm=60)
    limiter = create_shared_rate_limiter({"loop": Limit(rpm=60)})

    @ray.remote(num_cpus=0.25)
    class Caller:
        async def run(self, endpoint, limiter, seconds):
            from sefl_ray.llm.client import EndpointClient

            client = EndpointClient(endpoint, RetryConfig(max_attempts=1), limiter=limiter)
            deadline = time.monotonic() + seconds
            done = 0

            async def worker():
                nonlocal done
                while time.monotonic() < deadline:
                    result = await client.chat([{"role": "user", "content": "hi"}], max_tokens=4)
                    assert result.record.status == "ok"
                    done += 1

            await asyncio.gather(*(worker() for _ in range(2)))
            await client.close()
            return done

    callers = [Caller.remote() for _ in range(4)]
    per_actor = ray.get([caller.run.remote(endpoint, limiter, 30.0) for caller in callers])

    assert loopback.rate_limited_count == 0, "the server never had to refuse a request"
    assert loopback.max_in_window(60.0) <= 60
    assert loopback.count("ok") == sum(per_actor)
    arrivals = sorted(r.arrived_at for r in loopback.requests)
    served_in_30s = sum(1 for t in arrivals if t < arrivals[0] + 30.0)
    assert served_in_30s >= 0.95 * 30, f"only {served_in_30s} calls in 30 s at 60 RPM"
    assert min(per_actor) > 0, "every actor got a share"
