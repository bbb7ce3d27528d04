"""Loading a config: one YAML file, `--set a.b=c` overrides (lists indexed by position), validation errors that
name the key; and the fingerprint, the saved copy and the log of a resolved config."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sefl_ray.config.root import SeflConfig
from sefl_ray.durable import write_text
from sefl_ray.errors import ConfigError

logger = logging.getLogger(__name__)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> SeflConfig:
    """Read YAML (or start from defaults when `path` is None), apply KEY=VALUE overrides, validate."""
    raw: dict[str, Any] = {} if path is None else _read_yaml(Path(path))
    for override in overrides:
        _apply_override(raw, override)
    source = str(path) if path is not None else "config"
    try:
        return SeflConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe_validation_error(exc)}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE (e.g. --set ray.num_cpus=2), got '{override}'")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    node: Any = raw
    parts = key.strip().split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            index = _list_index(node, part, key, ".".join(parts[:depth]))
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {key}: '{parts[depth - 1]}' is not a section or a list")


def _list_index(items: list[Any], part: str, key: str, where: str) -> int:
    """`endpoints.0.rpm=5`: a list is indexed by position; a name or an index past the end is a clear error."""
    if not part.lstrip("-").isdigit():
        raise ConfigError(f"--set {key}: '{where}' is a list; index it by position, e.g. {where}.0")
    index = int(part)
    if not -len(items) <= index < len(items):
        raise ConfigError(f"--set {key}: '{where}' has {len(items)} entr{'y' if len(items) == 1 else 'ies'}; "
                          f"index {index} is out of range")
    return index


def _describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, naming the dotted key, joined with '; ' so the CLI still prints one line."""
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        elif error["type"] == "missing":
            problems.append(f"missing key '{key}'")
        else:
            problems.append(f"{key}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(problems)


def config_fingerprint(section: BaseModel | dict[str, Any]) -> str:
    """Stable short hash of a config section: the resume and skip key of a stage's outputs."""
    data = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


SECRET_MASK = "***"
# scheme://user:password@host: the userinfo part of any URL in a value
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@\s]+@")


def redact_text(text: str) -> str:
    """Credentials inside URLs masked: `https://user:key@host/v1` -> `https://***@host/v1`."""
    return _URL_USERINFO.sub(lambda match: f"{match['scheme']}{SECRET_MASK}@", text)


def redact_secrets(value: Any) -> Any:
    """A dumped config (or any part of one) fit to be written down: the values of every `env_vars` mapping (Ray's
    runtime_env carries keys there) and the credentials inside URLs are masked; the names stay, so a reader
    still sees that a value was set."""
    if isinstance(value, dict):
        return {key: ({name: SECRET_MASK for name in item} if key == "env_vars" and isinstance(item, dict)
                      else redact_secrets(item)) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_secrets(item) for item in value]
    return redact_text(value) if isinstance(value, str) else value


def redacted_dump(config: BaseModel) -> dict[str, Any]:
    """What every file and log line that shows a config holds (config.yaml, manifest.json, the logs, the cards)."""
    return redact_secrets(config.model_dump(mode="json"))


def config_as_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(redacted_dump(config), sort_keys=False)


def save_resolved_config(config: SeflConfig, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config beside a stage's outputs. Holds env var names only, never key values."""
    out_path = Path(out_dir) / name
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_text(out_path, config_as_yaml(config))
    return out_path


def log_resolved_config(config: SeflConfig, stage: str) -> None:
    logger.info("resolved config for %s:\n%s", stage, config_as_yaml(config))
