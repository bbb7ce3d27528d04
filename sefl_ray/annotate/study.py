"""`sefl-ray annotate create`: turn the run's system outputs into a blind rating study and print its links.

Each annotator gets a personal link with an unguessable token (`secrets.token_urlsafe`), the admin another one.
The database keeps only their sha256 hashes; the links are printed once and written to `STUDY_DIR/links.txt`
(mode 0600). Creating a study again with the same inputs and settings keeps the existing one (and its links);
with different ones it replaces a study that has no answers yet and refuses to touch one that has.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from sefl_ray.annotate.plan import plan_items, plan_slots
from sefl_ray.annotate.questions import study_questions
from sefl_ray.annotate.sources import item_context, load_context, load_feedback
from sefl_ray.annotate.store import Store, token_hash
from sefl_ray.config import SeflConfig, config_fingerprint
from sefl_ray.data.tables import read_rows
from sefl_ray.errors import ConfigError
from sefl_ray.layout import RunLayout

logger = logging.getLogger(__name__)

LINKS_FILE = "links.txt"


class StudyHasAnswers(ConfigError):
    """A different study with answers is in the database: it is never replaced."""


@dataclass
class Study:
    db_path: Path
    links_path: Path
    annotator_links: dict[str, str] = field(default_factory=dict)
    admin_link: str = ""
    reused: bool = False


def create_study(config: SeflConfig) -> Study:
    settings = config.annotate
    seed = config.seed if settings.seed is None else settings.seed
    study_dir = settings.resolved_study_dir(config.run_dir)
    db_path = settings.resolved_db_path(config.run_dir)
    systems = load_feedback(config)
    context = load_context(config)
    questions = study_questions(settings)
    names = sorted(systems)
    gold = _read_gold(settings.gold, names, {q.name for q in questions}) if settings.gold else {}
    planned = plan_items(systems, num_items=settings.num_items, seed=seed, exclude=set(gold))
    items = [_item_row(item_id, source, a, b, systems, context, gold.get(item_id))
             for item_id, source, a, b in planned]
    for item_id, answers in gold.items():
        source, system_a, system_b = item_id.split("::")
        if source not in systems[system_a] or source not in systems[system_b]:
            raise ConfigError(f"annotate.gold: item '{item_id}' has no feedback of both systems")
        items.append(_item_row(item_id, source, system_a, system_b, systems, context, answers))
    fingerprint = config_fingerprint({
        "items": [[row["item_id"], row["feedback_a"], row["feedback_b"], row["gold"]] for row in items],
        "settings": settings.model_dump(mode="json", exclude={"enabled", "host", "port", "base_url",
                                                              "admin_bootstrap", "auto_advance"}),
        "seed": seed})

    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"annotate: cannot create {exc.filename} ({exc.strerror}); set annotate.study_dir") from None
    store = Store(db_path)
    links_path = study_dir / LINKS_FILE
    try:
        store.check_writable_folder()
        if store.exists():
            existing = store.meta()
            if existing.get("fingerprint") == fingerprint and links_path.exists():
                logger.info("annotate: the study in %s is current; keeping it and its answers", db_path)
                return _read_links(db_path, links_path)
            if store.count_answers():
                raise StudyHasAnswers(f"annotate: {db_path} holds a different study with {store.count_answers()} "
                                  "answers; export it (`sefl-ray annotate export`) and move it away, or set "
                                  "annotate.study_dir to a new folder")
        tokens = {name: secrets.token_urlsafe(24) for name in settings.annotators}
        admin_token = secrets.token_urlsafe(24)
        slots = plan_slots([row["item_id"] for row in items if row["gold"] is None], settings.annotators,
                           overlap=settings.overlap, repeats=settings.repeats, gold_ids=list(gold), seed=seed)
        store.create({"fingerprint": fingerprint, "seed": str(seed), "systems": json.dumps(names),
                      "questions": json.dumps([q.model_dump(mode="json") for q in questions]),
                      "admin_token_sha256": token_hash(admin_token), "judge_ratings": _judge_ratings(config),
                      "auto_advance": json.dumps(settings.auto_advance)}, items, tokens, slots)
    finally:
        store.close()
    base = (settings.base_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    study = Study(db_path, links_path, {name: f"{base}/a/{token}/" for name, token in tokens.items()},
                  f"{base}/admin/{admin_token}/")
    _write_links(study)
    logger.info("annotate: study of %d items, %d annotators (overlap %d, %d repeats, %d gold) in %s", len(planned),
                len(tokens), settings.overlap, settings.repeats, len(gold), db_path)
    return study


def format_links(study: Study) -> str:
    lines = [f"study: {study.db_path}"]
    lines += [f"annotator {name}: {link}" for name, link in study.annotator_links.items()]
    lines.append(f"admin: {study.admin_link}")
    return "\n".join(lines)


def _item_row(item_id, source, system_a, system_b, systems, context, gold) -> dict:
    rows = [systems[system_a][source], systems[system_b][source]]
    texts = item_context(source, rows, context)
    prompt = next((row.get("prompt") for row in rows if row.get("prompt")), "") or ""
    return {"item_id": item_id, "source_item": source, "system_a": system_a, "system_b": system_b, **texts,
            "prompt": prompt, "feedback_a": rows[0]["feedback"], "feedback_b": rows[1]["feedback"],
            "gold": json.dumps(gold) if gold is not None else None}


def _read_gold(path: str, systems: list[str], questions: set[str]) -> dict[str, dict[str, str]]:
    """{study item id: {question: system or 'tie'}}; a source id alone is enough when there are two systems."""
    gold: dict[str, dict[str, str]] = {}
    for number, row in enumerate(read_rows(Path(path), key="annotate.gold", allow_empty=False), 1):
        where = f"{path} row {number}"
        item, question, answer = (str(row.get(key) or "").strip() for key in ("item_id", "question", "answer"))
        if not item or not question or not answer:
            raise ConfigError(f"{where}: give item_id, question and answer (a system name or tie)")
        if "::" not in item:
            if len(systems) != 2:
                raise ConfigError(f"{where}: with {len(systems)} systems, name the pair: item::system_a::system_b")
            item = f"{item}::{systems[0]}::{systems[1]}"
        pair = item.split("::")[1:]
        if len(pair) != 2 or sorted(pair) != pair or not set(pair) <= set(systems):
            raise ConfigError(f"{where}: '{item}' is not item::system_a::system_b of known systems, sorted")
        if question not in questions:
            raise ConfigError(f"{where}: no question '{question}' (questions: {', '.join(sorted(questions))})")
        if answer not in (*pair, "tie"):
            raise ConfigError(f"{where}: answer '{answer}' is not {pair[0]}, {pair[1]} or tie")
        gold.setdefault(item, {})[question] = answer
    return gold


def _judge_ratings(config: SeflConfig) -> str:
    path = config.annotate.judge_ratings or RunLayout(config.run_dir).judge_ratings
    return str(Path(path).resolve())


def _write_links(study: Study) -> None:
    text = format_links(study) + "\n"
    handle = os.open(study.links_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(handle, "w") as out:
        out.write(text)


def _read_links(db_path: Path, links_path: Path) -> Study:
    study = Study(db_path, links_path, reused=True)
    for line in links_path.read_text().splitlines():
        label, _, link = line.partition(": ")
        if label.startswith("annotator "):
            study.annotator_links[label.removeprefix("annotator ")] = link
        elif label == "admin":
            study.admin_link = link
    return study


def run_annotate(config: SeflConfig) -> Path:
    """The pipeline's `annotate` stage (when `annotate.enabled`): the study of the infer outputs, links logged.
    A study people have begun to answer is never replaced: the new outputs are kept and the study stays."""
    try:
        logger.info("annotate: the study's links (also in its links.txt):\n%s", format_links(create_study(config)))
    except StudyHasAnswers as exc:
        logger.warning("%s", exc)
    return config.annotate.resolved_db_path(config.run_dir)
