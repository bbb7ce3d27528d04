"""Push a finished folder (an export, a merged model) to the Hugging Face Hub or a self-hosted Hub mirror.

The token comes from the environment variable the caller names, never from a file or an argument, and is never
logged or returned. `dry_run` lists what would be uploaded without touching the network.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

from sefl_ray.errors import ConfigError, InputNotFoundError, MissingSecretError

logger = logging.getLogger(__name__)

REPO_TYPES = ("dataset", "model")


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: Literal["dataset", "model"],
    private: bool = False,
    token_env: str = "HF_TOKEN",
    endpoint: str | None = None,
    dry_run: bool = False,
    commit_message: str = "Upload with sefl-ray",
) -> dict[str, Any]:
    """Create `repo_id` if needed and upload every file of `folder` to its root in one go.

    Returns {"repo_id", "files" (paths relative to `folder`), "dry_run"}, plus "url" and "commit_url" after a real
    push. `endpoint` (default: $HF_ENDPOINT, else huggingface.co) points at a self-hosted Hub instead.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputNotFoundError(f"nothing to push: {folder} is not a folder")
    if repo_type not in REPO_TYPES:
        raise ConfigError(f"repo_type must be one of {', '.join(REPO_TYPES)}, got '{repo_type}'")
    files = folder_files(folder)
    if not files:
        raise InputNotFoundError(f"nothing to push: {folder} holds no files")

    if dry_run:
        logger.info(
            "dry run: would push %d files of %s to %s %s:\n  %s", len(files), folder, repo_type, repo_id,
            "\n  ".join(files),
        )
        return {"repo_id": repo_id, "files": files, "dry_run": True}

    token = _read_token(token_env)
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.is_offline_mode():
        raise ConfigError(
            f"cannot push {folder} to {repo_id}: HF_HUB_OFFLINE is set in this environment; unset it to push "
            "(or push with dry_run to list the files)"
        )
    api = HfApi(endpoint=endpoint, token=token)
    logger.info("pushing %d files of %s to %s %s at %s", len(files), folder, repo_type, repo_id, api.endpoint)
    try:
        repo_url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, repo_type=repo_type, commit_message=commit_message
        )
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise ConfigError(
                f"the Hub at {api.endpoint} refused to push to {repo_type} {repo_id} (HTTP {status}): check that "
                f"the token in ${token_env} is valid and has write access to that repo"
            ) from None
        raise
    logger.info("pushed %s: %s", repo_id, commit.commit_url)
    return {"repo_id": repo_id, "url": str(repo_url), "commit_url": commit.commit_url, "files": files,
            "dry_run": False}


def folder_files(folder: str | Path) -> list[str]:
    """Files `upload_folder` would send: every file under `folder` (POSIX paths relative to it, sorted), minus
    huggingface_hub's default ignores (`.git/`, `.cache/huggingface/`)."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    folder = Path(folder)
    relative = [path.relative_to(folder).as_posix() for path in sorted(folder.rglob("*")) if path.is_file()]
    return list(filter_repo_objects(relative, ignore_patterns=list(DEFAULT_IGNORE_PATTERNS)))


def _read_token(token_env: str) -> str:
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise MissingSecretError(
            f"environment variable {token_env} is not set: export a Hugging Face token with write access in it "
            "to push (https://huggingface.co/settings/tokens)"
        )
    return token
