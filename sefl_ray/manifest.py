"""The run manifest (`RUN_DIR/manifest.json`): what a run is made of and how each stage went.

It is the pipeline's memory: a stage whose recorded fingerprint matches and whose outputs still exist is skipped.
It is also the run's provenance for a reader: resolved config, package versions, git commit, and per stage its
timing, rows, tokens, cost and artifact paths (the numbers come from each stage's `numbers` in the
registry, `sefl_ray/stages.py`). It is rewritten after every stage, so an interrupted pipeline
leaves an accurate record of what finished.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from sefl_ray.durable import set_aside, write_json
from sefl_ray.layout import RunLayout

logger = logging.getLogger(__name__)

PACKAGES = ["sefl-ray", "ray", "torch", "transformers", "peft", "deepspeed", "autogen-agentchat", "autogen-ext",
            "datasets", "huggingface_hub", "openai", "pyarrow"]


def manifest_path(run_dir: str | Path) -> Path:
    return RunLayout(run_dir).manifest


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The manifest, or an empty one. An unreadable file is set aside (`manifest.json.unreadable`) and its stages
    simply run again: their own resume logic (row ids, call caches, train fingerprints) keeps that cheap."""
    path = manifest_path(run_dir)
    if not path.exists():
        return {"stages": {}}
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("stages"), dict):
            raise ValueError("no 'stages' mapping")
    except (OSError, ValueError, AttributeError) as exc:
        set_aside(path, f"{exc}; every stage is treated as not run")
        return {"stages": {}}
    return manifest


def write_manifest(run_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Atomic, so a kill mid-write never leaves half a manifest. One writer per run dir (`run_lock`): two at once
    would each keep only their own stage records."""
    return write_json(manifest_path(run_dir), manifest, default=str, allow_nan=True)


def environment_record() -> dict[str, Any]:
    """Versions and commit that produced the run: enough to rebuild the environment that made these artifacts."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    """The commit of the sefl-ray checkout (with `+dirty` for local changes); None outside a git checkout."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
