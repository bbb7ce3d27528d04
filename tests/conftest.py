"""Shared test kit: one local Ray per session, a loopback OpenAI server per test, offline models."""

from __future__ import annotations

import os
import tempfile

import pytest

# Set before Ray starts so every worker sees them: no hub, and a private model cache for the session.
os.environ.setdefault("SEFL_RAY_CACHE", tempfile.mkdtemp(prefix="sefl-ray-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session; tests needing their own cluster use ray.cluster_utils.Cluster."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, object_store_memory=256 * 1024 * 1024, include_dashboard=False,
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


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def embedded_cache():
    from pathlib import Path

    return Path(os.environ["SEFL_RAY_CACHE"])


@pytest.fixture(scope="session")
def embedded_model_dir(embedded_cache):
    """SmolLM2-135M-Instruct converted once per session (about 25 s on 2 cores)."""
    from sefl_ray.models import prepare_embedded_model

    return prepare_embedded_model("smollm2-135m")
