"""Shared test kit: one local Ray per session, a loopback OpenAI server per test, offline models."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session; tests needing their own cluster use ray.cluster_utils.Cluster."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, object_store_memory=256 * 1024 * 1024, include_dashboard=False,
                 namespace="sefl-ray-tests")
    yield ray
    ray.shutdown()


@pytest.fixture
def loopback():
    """A fresh loopback OpenAI server; tests set `loopback.config` to add latency, faults or limits."""
    from sefl_ray.testing.loopback import LoopbackServer

    with LoopbackServer() as server:
        yield server


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from sefl_ray.testing.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
