"""The run manifest (`RUN_DIR/manifest.json`): what a run is made of and how each stage went.

It is the pipeline's memory: a stage whose recorded fingerprint matches and whose outputs still exist is skipped.
It is also the run's provenance for a reader: resolved config, package versions, git commit, and per stage its
timing, rows, tokens, cost and artifact paths. It is rewritten after every stage, so an interrupted pipeline
leaves an accurate record of what finished.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
PACKAGES = ["sefl-ray", "ray", "torch", "transformers", "peft", "deepspeed", "autogen-agentchat", "autogen-ext",
            "datasets", "huggingface_hub", "openai", "pyarrow"]


def manifest_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / MANIFEST_FILE


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
        logger.warning("%s is unreadable (%s): moved to %s.unreadable; every stage is treated as not run", path,
                       exc, path.name)
        path.replace(path.with_name(path.name + ".unreadable"))
        return {"stages": {}}
    return manifest


def write_manifest(run_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write atomically (a temp file of this process, then a rename), so a kill mid-write never leaves half a
    manifest. One pipeline per run dir: two at once would each keep only their own stage records."""
    path = manifest_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=path.parent)
    with os.fdopen(handle, "w") as out:
        out.write(json.dumps(manifest, indent=2, default=str))
    os.replace(temp, path)
    return path


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


def stage_numbers(name: str, run_dir: Path) -> dict[str, Any]:
    """Rows, tokens and cost of a finished stage, read from the summary file the stage itself wrote."""
    readers = {
        "synth": _synth_numbers, "export": _export_numbers, "train": _train_numbers, "infer": _infer_numbers,
        "judge": _judge_numbers,
    }
    reader = readers.get(name)
    if reader is None:
        return {}
    try:
        return reader(run_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # a stage that wrote no summary (or an older one) still gets its timing recorded


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _usage_totals(usage: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Token and cost totals over synth's per-role usage; cost stays None when no endpoint has a price."""
    entries = list(usage.values())
    prompt = sum(entry.get("prompt_tokens") or 0 for entry in entries)
    completion = sum(entry.get("completion_tokens") or 0 for entry in entries)
    costs = [entry["cost_usd"] for entry in entries if entry.get("cost_usd") is not None]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "tokens": prompt + completion,
            "cost_usd": round(sum(costs), 6) if costs else None}


def _synth_numbers(run_dir: Path) -> dict[str, Any]:
    summary = _read_json(run_dir / "synth" / "summary.json")
    return {"rows": summary["ok"] + summary["failed"], "ok": summary["ok"], "failed": summary["failed"],
            **_usage_totals(summary.get("usage", {}))}


def _export_numbers(run_dir: Path) -> dict[str, Any]:
    summary = _read_json(run_dir / "export" / "export_summary.json")
    return {"rows": summary["records"]["exported"], "splits": summary["splits"]}


def _train_numbers(run_dir: Path) -> dict[str, Any]:
    summary = _read_json(run_dir / "train" / "summary.json")
    return {"rows": summary["data"]["train_examples"], "tokens": summary["data"]["train_tokens"],
            "steps": summary["steps"], "final_eval_loss": summary.get("final_eval_loss")}


def _infer_numbers(run_dir: Path) -> dict[str, Any]:
    systems = {}
    for summary_path in sorted((run_dir / "infer").glob("*/summary.json")):
        summary = _read_json(summary_path)
        systems[summary_path.parent.name] = {"rows": summary["rows"], "ok": summary["ok"], "failed": summary["failed"]}
    return {"rows": sum(system["rows"] for system in systems.values()), "systems": systems}


def _judge_numbers(run_dir: Path) -> dict[str, Any]:
    calls = _read_json(run_dir / "judge" / "summary.json")["calls"]
    return {"rows": calls["total"], "ok": calls["ok"], "failed": calls["failed"], "cached": calls["cached"],
            "tokens": calls["prompt_tokens"] + calls["completion_tokens"], "cost_usd": calls["cost_usd"]}
