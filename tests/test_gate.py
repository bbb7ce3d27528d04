"""The quality gates between synth and export: each filters exactly the records it should, with its reason on the row,
the export holds exactly the records that passed, near-duplicates go (recall and precision on a planted corpus), and
a re-run after a change to one gate pays for no call twice.

The model gates talk to the loopback server, whose scripted judge reads which record it is asked about from a marker
in the assignment and rules as the script says: a real HTTP round trip through the endpoint layer, offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from sefl_ray.config import DedupConfig, FormatGateConfig, load_config
from sefl_ray.data.records import GATED_RECORD_SCHEMA, RECORD_SCHEMA, record_id
from sefl_ray.durable import write_jsonl
from sefl_ray.gate.dedup import find_duplicates
from sefl_ray.gate.language import detect_language
from sefl_ray.gate.verdicts import format_verdict
from sefl_ray.layout import RunLayout
from sefl_ray.testing.loopback import LoopbackServer, RawReply
from sefl_ray.testing.near_duplicates import make_corpus, score

TOPICS = [
    ("photosynthesis", "Plants turn light, water and carbon dioxide into glucose and oxygen in their chloroplasts."),
    ("volcanoes", "Magma rises through cracks in the crust; when pressure builds, it erupts as lava and ash."),
    ("fractions", "To add fractions with different denominators, first rewrite them over a common denominator."),
    ("the water cycle", "Water evaporates from seas, condenses into clouds and falls again as rain or snow."),
    ("the French Revolution", "In 1789 the Estates-General met, the Bastille fell, and the monarchy was challenged."),
    ("plate tectonics", "The lithosphere is split into plates that drift a few centimetres a year on the mantle."),
    ("the human heart", "The heart has four chambers; the left ventricle pumps oxygen-rich blood to the body."),
    ("prime numbers", "A prime has exactly two divisors, one and itself; 2 is the only even prime number."),
    ("Newton's laws", "A force on a mass makes it accelerate: force equals mass times acceleration, F = ma."),
    ("the Roman Empire", "Augustus became the first emperor in 27 BC, after the civil wars ended the republic."),
    ("electric circuits", "In a series circuit the same current flows through every part; voltages add up."),
    ("cell division", "In mitosis one cell divides into two identical daughter cells with the same chromosomes."),
    ("supply and demand", "When a good is scarce and many want it, its price rises until buyers and sellers meet."),
    ("the Moon", "The Moon shows phases because we see varying parts of its sunlit half as it orbits Earth."),
]


def record(key: str, topic: int, *, status: str = "ok", feedback: str | None = None,
           assignment: str | None = None, kinds: tuple[str, ...] = ("factual", "reasoning")) -> dict:
    """One synthesized record about TOPICS[topic], its assignment carrying `[row:key]` for the scripted judge."""
    name, passage = TOPICS[topic]
    source_id = f"src-{key}"
    first, second = passage.split(" ", 8)[-1], passage.split(";")[0].split(",")[0]
    items = [f"Your first claim contradicts what the text says ({first}) reread it and compare.",
             f"Your conclusion does not follow: '{second}' does not lead there; check each step."][:len(kinds)]
    return {
        "id": record_id(source_id, 0, "gate-test"), "source_id": source_id, "source_text": passage,
        "sample_index": 0, "preset": "default",
        "assignment": assignment or f"[row:{key}] {passage} What does this tell us about {name}?",
        "submission": f"About {name}: {passage[::-1][:80]}" if status == "ok" else None,
        "errors": ["misstated the main fact", "drew a conclusion that does not follow"][:len(kinds)],
        "mistake_kinds": list(kinds),
        "feedback": feedback or " ".join(items) if status == "ok" else None,
        "feedback_items": items if status == "ok" else [],
        "messages": [], "teacher_model": "judge-model", "student_model": "student-model", "usage": [],
        "status": status, "error": None if status == "ok" else "student reply is not valid JSON", "raw": None,
        "config_fingerprint": "gate-test", "finished_at": 1000.0,
    }


# key -> the scripted judge's answer per gate (unlisted gates pass); None: the record is not asked that gate
SCRIPT = {
    "nonsense": {"sense": {"makes_sense": False, "answerable_from_passage": True}},
    "unanswerable": {"sense": {"makes_sense": True, "answerable_from_passage": False}},
    "missing-mistake": {"coverage": {"mistakes_present": [True, False], "item_addresses": [1, 2]}},
    "stray-item": {"coverage": {"mistakes_present": [True, True], "item_addresses": [1, 0]}},
    "unaddressed": {"coverage": {"mistakes_present": [True, True], "item_addresses": [1, 1]}},
    "giveaway": {"giveaway": {"leaves_work_to_student": False}},
    "garbled": {"coverage": "this is not JSON at all"},
}
PASSING = ["good-0", "good-1", "good-2", "good-3"]


def planted_records() -> list[dict]:
    rows = [record(key, topic) for topic, key in enumerate(PASSING)]
    rows += [record(key, 4 + index) for index, key in enumerate(SCRIPT)]
    rows.append(record("role-text", 11, feedback="Teacher: " + " ".join(rows[0]["feedback_items"]) + " Student:"))
    rows.append(record("json-debris", 12, feedback='{"feedback": "Your first claim is wrong.", "items": []} and so on'))
    rows.append(record("too-short", 13, feedback="Good."))
    rows.append(record("german", 13, feedback="Die erste Aussage ist nicht richtig, und die Schlussfolgerung folgt "
                                              "nicht aus dem, was du vorher geschrieben hast. Lies den Text noch "
                                              "einmal und prüfe jeden Schritt."))
    duplicate = record("duplicate", 0, assignment=rows[0]["assignment"])  # the same text as good-0, another id
    rows.append(duplicate)
    rows.append(record("synth-failed", 9, status="failed"))
    return rows


def key_of(row: dict) -> str:
    return row["source_id"].removeprefix("src-")


def scripted_judge(body: dict) -> str | RawReply:
    gate = {"SenseAnswer": "sense", "CoverageAnswer": "coverage", "GiveawayAnswer": "giveaway"}[
        body["response_format"]["json_schema"]["name"]]
    prompt = body["messages"][-1]["content"]
    key = prompt.split("[row:", 1)[1].split("]", 1)[0]
    answer = SCRIPT.get(key, {}).get(gate)
    if isinstance(answer, str):
        return answer
    passing = {"sense": {"makes_sense": True, "answerable_from_passage": True},
               "coverage": {"mistakes_present": [True, True], "item_addresses": [1, 2]},
               "giveaway": {"leaves_work_to_student": True}}[gate]
    return json.dumps({**passing, **(answer or {}), "rationale": f"scripted {gate} ruling"})


def write_run(run_dir: Path, rows: list[dict]) -> None:
    layout = RunLayout(run_dir)
    layout.synth_records.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), layout.synth_records / "part-0.parquet")
    write_jsonl(layout.synth_plan, [{"id": row["id"], "source_id": row["source_id"]} for row in rows])


def gate_config(run_dir: Path, base_url: str, *overrides: str):
    return load_config(None, [
        f"run_dir={run_dir}", f"endpoints=[{{name: judge, model: judge-model, base_url: '{base_url}'}}]",
        "gate.endpoint=judge", "gate.num_actors=1", "retry.max_attempts=1", "export.valid_fraction=0.25",
        *overrides])


# ------------------------------------------------------------------------------------------------- the gates


def test_each_gate_filters_exactly_its_records_and_export_holds_exactly_the_passing_ones(ray_session, tmp_path):
    from sefl_ray.export.run import run_export
    from sefl_ray.gate.run import run_gate

    rows = planted_records()
    write_run(tmp_path, rows)
    with LoopbackServer(replies=scripted_judge) as server:
        run_gate(gate_config(tmp_path, server.base_url))
        asked = [request.body for request in server.requests if request.path.endswith("/chat/completions")]
    gated = {key_of(row): row for row in pq.read_table(RunLayout(tmp_path).gate_records).to_pylist()}
    assert len(gated) == len(rows)
    # good-0 and its copy: the smaller id survives, the other is the duplicate
    kept, dropped = sorted(["good-0", "duplicate"], key=lambda key: gated[key]["id"])
    passing = sorted({*PASSING, kept} - {dropped})

    filtered_by = {key: row["gate"] for key, row in gated.items() if row["status"] == "filtered"}
    assert filtered_by == {"nonsense": "sense", "unanswerable": "sense", "missing-mistake": "coverage",
                           "stray-item": "coverage", "unaddressed": "coverage", "giveaway": "giveaway",
                           "role-text": "format", "json-debris": "format", "too-short": "format",
                           "german": "format", dropped: "dedup"}
    reasons = {key: gated[key]["gate_reason"] for key in filtered_by}
    assert reasons["missing-mistake"] == "mistake 2 is not in the student's answer"
    assert reasons["stray-item"] == "feedback item 2 addresses no planned mistake"
    assert reasons["unaddressed"] == "mistake 2 gets no feedback"
    assert reasons["german"] == "feedback is written in 'de', not 'en'"
    assert reasons[dropped].startswith(f"near-duplicate of {gated[kept]['id']} (similarity 1.00)")
    assert "leftover role" in reasons["role-text"] and "JSON debris" in reasons["json-debris"]
    # the verdict and the model's rationale stay on the row; the mapping is kept as JSON
    coverage = next(v for v in gated["missing-mistake"]["gate_verdicts"] if v["gate"] == "coverage")
    assert coverage["rationale"] == "scripted coverage ruling"
    assert json.loads(coverage["details"]) == {"present": {"1": True, "2": False}, "item_to_mistake": {"1": 1, "2": 2}}
    # an answer that is not the verdict, and synth's own failure, are failures with a reason, not rulings
    assert gated["garbled"]["status"] == "failed" and gated["garbled"]["error"].startswith("gate coverage:")
    assert gated["synth-failed"]["status"] == "failed" and gated["synth-failed"]["gate_verdicts"] == []
    assert sorted(key for key, row in gated.items() if row["status"] == "ok") == passing
    # a record stops at the first gate it fails: the later gates never asked about it
    asked_keys = [(body["response_format"]["json_schema"]["name"],
                   body["messages"][-1]["content"].split("[row:", 1)[1].split("]", 1)[0]) for body in asked]
    assert not any(key in {"role-text", "german", "synth-failed"} for _, key in asked_keys)
    assert [gate for gate, key in asked_keys if key == "nonsense"] == ["SenseAnswer"]
    assert ("GiveawayAnswer", "missing-mistake") not in asked_keys and ("GiveawayAnswer", "good-0") in asked_keys

    summary = json.loads(RunLayout(tmp_path).gate_summary.read_text())
    assert summary["gates"]["sense"] == {"checked": 11, "passed": 9, "filtered": 2, "pass_rate": 0.8182,
                                         "reasons": {"the assignment does not make sense": 1,
                                                     "the passage does not answer the assignment": 1}}
    assert summary["duplicates"]["removed"] == 1
    assert summary["duplicates"]["examples"][0]["kept"]["id"] == gated[kept]["id"]

    from sefl_ray.report.quality import quality_sections

    gates_part, reasons_part, duplicates_part = quality_sections(tmp_path)
    assert [row[0] for row in gates_part["table"][1]] == ["format", "dedup", "sense", "coverage", "giveaway"]
    assert ["format", "feedback has N characters, fewer than N", 1] in reasons_part["table"][1]
    assert duplicates_part["table"][1][0][0] == gated[kept]["id"]

    config = gate_config(tmp_path, "http://unused")
    run_export(config)
    exported = datasets.load_from_disk(str(RunLayout(tmp_path).export_hf))
    assert sorted([*exported["train"]["id"], *exported["valid"]["id"]]) == sorted(gated[key]["id"] for key in passing)
    card = (RunLayout(tmp_path).export_dir / "README.md").read_text()
    assert "## Data quality" in card and "| coverage | 8 | 5 | 3 | 62.5% |" in card

    run_export(config.model_copy(update={"export": config.export.model_copy(update={"include_filtered": True})}))
    exported = datasets.load_from_disk(str(RunLayout(tmp_path).export_hf))
    rows_out = list(exported["train"]) + list(exported["valid"])
    assert len(rows_out) == len(passing) + len(filtered_by)
    assert {row["id"]: row["gate"] for row in rows_out if row["status"] == "filtered"} == {
        gated[key]["id"]: gate for key, gate in filtered_by.items()}


def test_a_changed_gate_reruns_only_the_new_questions(ray_session, tmp_path):
    """Loosening the format gate lets one more record through: the re-run asks the judge only about that record;
    every earlier answer comes from the call cache."""
    from sefl_ray.gate.run import run_gate

    rows = planted_records()
    write_run(tmp_path, rows)
    with LoopbackServer(replies=scripted_judge) as server:
        run_gate(gate_config(tmp_path, server.base_url))
        first = len(server.requests)
        server.reset()
        run_gate(gate_config(tmp_path, server.base_url, "gate.format.min_chars={feedback: 1}"))
        again = [request.body["messages"][-1]["content"] for request in server.requests]
    assert first > 0 and len(again) == 3  # too-short's sense, coverage and giveaway: nothing else is asked twice
    assert all("[row:too-short]" in prompt for prompt in again)
    gated = {key_of(row): row for row in pq.read_table(RunLayout(tmp_path).gate_records).to_pylist()}
    assert gated["too-short"]["status"] == "ok"


def test_gates_switched_off_pass_every_ok_record(ray_session, tmp_path):
    from sefl_ray.gate.run import run_gate

    rows = planted_records()
    write_run(tmp_path, rows)
    run_gate(gate_config(tmp_path, "http://127.0.0.1:9/v1", "gate.enabled=false"))
    table = pq.read_table(RunLayout(tmp_path).gate_records, schema=GATED_RECORD_SCHEMA)
    assert table["status"].to_pylist().count("ok") == len(rows) - 1


# ------------------------------------------------------------------------------------------------ the parts


def test_format_gate_reads_each_problem_and_passes_clean_text():
    settings = FormatGateConfig()
    clean = record("clean", 0)
    assert format_verdict(clean, settings).passed
    for feedback, reason in [
        ("<|im_end|> " + clean["feedback"], "leftover role or template text"),
        ("### FEEDBACK: " + clean["feedback"], "leftover role or template text"),
        ('[{"feedback_1": "x"}] ' + clean["feedback"], "JSON debris"),
        (clean["feedback"] + ' "errors": [1]', "JSON debris"),
        ("x" * 4001, "more than 4000"),
    ]:
        verdict = format_verdict({**clean, "feedback": feedback}, settings)
        assert not verdict.passed and reason in verdict.reason, (feedback[:30], verdict)
    assert format_verdict({**clean, "submission": "Yes."}, settings).reason == \
        "submission has 4 characters, fewer than 20"
    assert format_verdict({**clean, "feedback": "Good."}, FormatGateConfig(min_chars={})).passed


def test_language_is_read_from_function_words():
    assert detect_language("The student wrote that the heart has three chambers, but the passage says that it has "
                           "four, and the answer does not explain why.") == "en"
    assert detect_language("Der Schüler hat geschrieben, dass das Herz drei Kammern hat, aber der Text sagt, dass "
                           "es vier sind, und die Antwort erklärt nicht warum.") == "de"
    assert detect_language("L'élève a écrit que le cœur a trois cavités, mais le texte dit qu'il en a quatre, et "
                           "la réponse ne dit pas pourquoi.") == "fr"
    assert detect_language("Too short to tell.") is None


def test_near_duplicates_are_found_with_high_recall_and_precision():
    corpus = make_corpus(3000, duplicate_share=0.2, seed=3)
    removed = find_duplicates(corpus.ids, corpus.texts, DedupConfig(), use_ray=False)
    result = score(corpus, {row: duplicate.kept_id for row, duplicate in removed.items()})
    assert result["recall"] >= 0.95 and result["precision"] >= 0.95, result
    by_kind = {kind: [row for row, made in corpus.kind_of.items() if made == kind] for kind in
               ("exact", "reworded", "reordered")}
    for kind, rows in by_kind.items():
        assert sum(row in removed or any(d.kept_id == row for d in removed.values()) for row in rows) >= \
            0.95 * len(rows), kind
    # the survivor of each cluster is its smallest id, whatever order the rows come in
    reversed_removed = find_duplicates(corpus.ids[::-1], corpus.texts[::-1], DedupConfig(), use_ray=False)
    assert {row: d.kept_id for row, d in reversed_removed.items()} == {row: d.kept_id for row, d in removed.items()}
    assert all(d.kept_id < row for row, d in removed.items())


def test_dedup_on_ray_data_matches_one_process(ray_session):
    corpus = make_corpus(600, seed=5)
    local = find_duplicates(corpus.ids, corpus.texts, DedupConfig(), use_ray=False)
    on_ray = find_duplicates(corpus.ids, corpus.texts, DedupConfig(), use_ray=True)
    assert on_ray == local and len(local) > 50
