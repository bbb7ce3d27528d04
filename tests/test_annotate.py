"""The human rating study (`sefl-ray annotate`): creation, blindness, the API's refusals, SQLite under concurrent
writers, export into `sefl-ray agreement`, SEFL spreadsheet import, the admin view, the pipeline hook. Every HTTP
test talks to a real uvicorn server on 127.0.0.1; the browser scenario is in test_annotate_browser.py."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from sefl_ray.annotate.export import export_study
from sefl_ray.annotate.plan import shown_order
from sefl_ray.annotate.server import app_in_thread
from sefl_ray.annotate.store import Store
from sefl_ray.annotate.study import StudyHasAnswers, create_study
from sefl_ray.annotate.synthetic import write_synthetic_run
from sefl_ray.cli import main
from sefl_ray.config import load_config
from sefl_ray.testing.browser import chromium_or_skip
from sefl_ray.testing.ports import free_port

SYSTEMS = ("sysname_alpha_base", "sysname_omega_tuned")  # distinctive: a grep for them finds nothing by chance
BASE, TUNED = SYSTEMS


def study_config(run_dir: Path, *overrides: str, n_items: int = 6):
    context = write_synthetic_run(run_dir, n_items=n_items, systems=SYSTEMS)
    return load_config(None, [f"run_dir={run_dir}", f"annotate.context={context}", "annotate.annotators=[ann,bea]",
                              "annotate.overlap=2", *overrides])


def state_of(html: str) -> dict:
    return json.loads(html.split('<script type="application/json" id="state">')[1].split("</script>")[0])


def token_of(link: str) -> str:
    return link.rstrip("/").rsplit("/", 1)[1]


@pytest.fixture
def study(tmp_path):
    config = study_config(tmp_path / "run", "annotate.annotators=[ann,bea,cem]", "annotate.repeats=1")
    created = create_study(config)
    store = Store(created.db_path)
    with app_in_thread(store, port=free_port()) as base:
        yield {"config": config, "study": created, "store": store, "base": base,
               "tokens": {name: token_of(link) for name, link in created.annotator_links.items()},
               "admin": token_of(created.admin_link)}
    store.close()


def slots_of(store: Store, annotator: str) -> list[sqlite3.Row]:
    return [slot for slot in store.slots() if slot["annotator"] == annotator]


def post(base: str, token: str, **body) -> requests.Response:
    return requests.post(f"{base}/a/{token}/api/answer", json=body, timeout=10)


# ---- creating a study ----

def test_a_study_gives_each_item_overlap_annotators_a_seeded_order_and_swapped_repeats(tmp_path):
    config = study_config(tmp_path / "run", "annotate.annotators=[ann,bea,cem]", "annotate.repeats=1")
    created = create_study(config)
    store = Store(created.db_path)
    slots, items = store.slots(), store.items()
    assert len(items) == 6 and all(item["item_id"] == f"{item['source_item']}::{BASE}::{TUNED}" for item in items)
    regular = [slot for slot in slots if slot["kind"] == "regular"]
    assert Counter(slot["item_id"] for slot in regular) == {item["item_id"]: 2 for item in items}  # overlap 2
    assert Counter(slot["annotator"] for slot in regular) == {"ann": 4, "bea": 4, "cem": 4}
    for slot in regular:
        assert slot["shown_order"] == shown_order(0, slot["annotator"], slot["item_id"])
    assert {slot["shown_order"] for slot in regular} == {"AB", "BA"}
    for name in ("ann", "bea", "cem"):
        queue = slots_of(store, name)
        assert [slot["position"] for slot in queue] == list(range(1, 6))
        (repeat,) = [slot for slot in queue if slot["kind"] == "repeat"]
        (original,) = [slot for slot in queue if slot["kind"] == "regular" and slot["item_id"] == repeat["item_id"]]
        assert repeat["position"] > original["position"] and repeat["shown_order"] != original["shown_order"]
    # the context comes from the test set, the feedback from infer
    item = store.item(items[0]["item_id"])
    assert item["passage"].startswith("Passage") and item["submission"].startswith("The moon has phases")
    # tokens: unguessable, distinct, and only their hashes are in the database
    tokens = [token_of(link) for link in [*created.annotator_links.values(), created.admin_link]]
    assert len(set(tokens)) == 4 and all(len(token) >= 32 for token in tokens)
    raw = created.db_path.read_bytes() + Path(f"{created.db_path}-wal").read_bytes() if Path(
        f"{created.db_path}-wal").exists() else created.db_path.read_bytes()
    assert not any(token.encode() in raw for token in tokens)
    assert created.links_path.stat().st_mode & 0o777 == 0o600
    store.close()


def test_creating_again_keeps_the_study_and_never_replaces_one_with_answers(study, tmp_path):
    config, store = study["config"], study["store"]
    again = create_study(config)
    assert again.reused and again.annotator_links == study["study"].annotator_links
    slot = slots_of(store, "ann")[0]
    assert post(study["base"], study["tokens"]["ann"], slot=slot["slot_id"], question="overall", value="A",
                revision=0).status_code == 200
    changed = config.model_copy(update={"annotate": config.annotate.model_copy(update={"num_items": 3})})
    with pytest.raises(StudyHasAnswers, match="holds a different study with 1 answers"):
        create_study(changed)
    assert store.count_answers() == 1


def test_run_dir_or_files_by_path(tmp_path):
    run = tmp_path / "run"
    write_synthetic_run(run, n_items=4, systems=SYSTEMS)
    files = [str(run / "infer" / system / "outputs.parquet") for system in SYSTEMS]
    config = load_config(None, [f"run_dir={tmp_path / 'elsewhere'}", f"annotate.inputs={json.dumps(files)}",
                                "annotate.annotators=[ann]", "annotate.overlap=1", "annotate.num_items=3"])
    store = Store(create_study(config).db_path)
    assert len(store.items()) == 3
    item = store.items()[0]  # no test set here: the assignment and answer are read back from the prompt
    assert item["assignment"].startswith("Explain") and item["submission"].startswith("The moon")
    assert not item["passage"]
    store.close()


# ---- the API: blindness, ownership, refusals ----

def test_nothing_an_annotator_receives_names_a_system_or_an_item_id(study):
    store, base = study["store"], study["base"]
    secrets_ = [*SYSTEMS, *(item["item_id"] for item in store.items()),
                *(item["source_item"] for item in store.items())]
    seen = []
    for name, token in study["tokens"].items():
        session = requests.Session()
        responses = [session.get(f"{base}/a/{token}/", timeout=10), session.get(f"{base}/a/{token}/done", timeout=10),
                     session.get(f"{base}/static/annotate.js", timeout=10),
                     session.get(f"{base}/static/annotate.css", timeout=10)]
        for slot in slots_of(store, name):
            page = session.get(f"{base}/a/{token}/{slot['position']}", timeout=10)
            responses += [page, session.get(f"{base}/a/{token}/api/slot/{slot['slot_id']}", timeout=10)]
            state = state_of(page.text)
            for question, value in (("overall", "B"), ("overall", "A"), ("overall", "nonsense"), ("nope", "A"),
                                    ("comment", "ok")):  # the second overall, at revision 0 again, is a 409
                responses.append(post(base, token, slot=state["slot"], question=question, value=value, revision=0))
        responses += [session.get(f"{base}/a/{token}/999", timeout=10), post(base, token, slot="x", question="overall",
                                                                             value="A", revision=0)]
        seen += responses
    assert {response.status_code for response in seen} >= {200, 404, 409, 422}
    for response in seen:
        text = response.text + json.dumps(dict(response.headers))
        leaked = [secret for secret in secrets_ if secret in text]
        assert not leaked, (response.url, leaked)


def test_an_annotator_can_neither_read_nor_write_another_annotators_items_and_admin_needs_its_token(study):
    store, base, tokens = study["store"], study["base"], study["tokens"]
    bea_slot = slots_of(store, "bea")[0]["slot_id"]
    assert post(base, tokens["bea"], slot=bea_slot, question="overall", value="A", revision=0).status_code == 200
    read = requests.get(f"{base}/a/{tokens['ann']}/api/slot/{bea_slot}", timeout=10)
    write = post(base, tokens["ann"], slot=bea_slot, question="overall", value="B", revision=1)
    assert (read.status_code, write.status_code) == (403, 403)
    assert "another annotator" in write.json()["detail"] and "A" not in read.text.replace("annotator", "")
    assert store.count_answers() == 1
    for path in ("/", "/progress.json", "/agreement.json"):
        assert requests.get(f"{base}/admin/{tokens['ann']}{path}", timeout=10).status_code == 403
        assert requests.get(f"{base}/admin/{study['admin']}{path}", timeout=10).status_code == 200
    assert requests.get(f"{base}/a/{study['admin']}/", timeout=10).status_code == 403  # not an annotator's token
    assert requests.get(f"{base}/a/{tokens['ann'][:-1]}x/", timeout=10).status_code == 403


@pytest.mark.parametrize("body, status, message", [
    ("{not json", 400, "not valid JSON"),
    ('{"question": "overall", "value": "A", "revision": 0}', 400, "slot"),
    ('{"slot": "SLOT", "question": "overall", "value": "A", "revision": "0"}', 400, "revision"),
    ('{"slot": "SLOT", "question": "overall", "value": "A", "revision": -1}', 400, "revision"),
    ('{"slot": "SLOT", "question": "overall", "value": "A", "revision": 0, "extra": 1}', 400, "extra"),
    ('[1, 2]', 400, "malformed"),
    ('{"slot": "no-such-slot", "question": "overall", "value": "A", "revision": 0}', 404, "no item"),
    ('{"slot": "SLOT", "question": "helpfulness", "value": "A", "revision": 0}', 422, "no question 'helpfulness'"),
    ('{"slot": "SLOT", "question": "overall", "value": "C", "revision": 0}', 422, "takes one of A, B, tie"),
    ('{"slot": "SLOT", "question": "sense", "value": "A", "revision": 0}', 422, "takes one of yes, no"),
    ('{"slot": "SLOT", "question": "overall", "value": 1, "revision": 0}', 422, "takes one of"),
    ('{"slot": "SLOT", "question": "comment", "value": "' + "x" * 5001 + '", "revision": 0}', 422, "at most 5000"),
    ('{"slot": "SLOT", "question": "comment", "value": "' + "x" * 70000 + '", "revision": 0}', 413, "over"),
    ('{"slot": "SLOT", "question": "overall", "value": "A", "revision": 1}', 409, "revision 0, not 1"),
])
def test_bad_answers_get_a_4xx_with_a_clear_message_and_store_nothing(study, body, status, message):
    slot = slots_of(study["store"], "ann")[0]["slot_id"]
    response = requests.post(f"{study['base']}/a/{study['tokens']['ann']}/api/answer",
                             data=body.replace("SLOT", slot), headers={"Content-Type": "application/json"},
                             timeout=10)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"] and "\n" not in response.json()["detail"]
    assert study["store"].count_answers() == 0


def test_a_replayed_save_is_409_and_a_revision_chain_keeps_the_history(study):
    store, base, token = study["store"], study["base"], study["tokens"]["ann"]
    slot = slots_of(store, "ann")[0]["slot_id"]
    first = post(base, token, slot=slot, question="overall", value="A", revision=0)
    replay = post(base, token, slot=slot, question="overall", value="A", revision=0)
    revised = post(base, token, slot=slot, question="overall", value="tie", revision=1)
    assert (first.json(), replay.status_code, revised.json()) == ({"revision": 1}, 409, {"revision": 2})
    assert replay.json()["current"] == {"value": "A", "revision": 1}
    rows = [dict(row) for row in store.all_answers()]
    assert [(row["value"], row["revision"]) for row in rows] == [("A", 1), ("tie", 2)]
    assert all(row["annotator"] == "ann" and row["shown_order"] in ("AB", "BA") and row["answered_at"] for row in rows)
    assert store.slot_answers(slot) == {"overall": {"value": "tie", "revision": 2}}


def test_resume_opens_the_first_unfinished_item(study):
    store, base, token = study["store"], study["base"], study["tokens"]["ann"]
    first = slots_of(store, "ann")[0]["slot_id"]
    for question in ("sense", "accuracy", "actionability", "conciseness", "tone", "overall"):
        value = "yes" if question == "sense" else "B"
        assert post(base, token, slot=first, question=question, value=value, revision=0).status_code == 200
    resumed = requests.get(f"{base}/a/{token}/", timeout=10)
    assert resumed.url.endswith(f"/a/{token}/2") and "Item <b id=\"position\">2</b> of <b>5</b>" in resumed.text
    assert '<span id="complete-count">1</span>' in resumed.text
    back = requests.get(f"{base}/a/{token}/1", timeout=10)  # revising an earlier item shows its answers
    assert state_of(back.text)["answers"]["overall"] == {"value": "B", "revision": 1}
    assert back.text.count('aria-pressed="true"') == 6


# ---- storage ----

def test_the_database_is_sqlite_in_wal_mode_and_concurrent_writers_lose_nothing(study):
    store, base, tokens = study["store"], study["base"], study["tokens"]
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    jobs = [(name, slot["slot_id"], question) for name in tokens for slot in slots_of(store, name)
            for question in ("accuracy", "actionability", "conciseness", "tone", "overall")]
    statuses: list[int] = []

    def annotator(name: str) -> None:
        with requests.Session() as session:
            for who, slot, question in jobs:
                if who == name:
                    response = session.post(f"{base}/a/{tokens[name]}/api/answer", timeout=30,
                                            json={"slot": slot, "question": question, "value": "A", "revision": 0})
                    statuses.append(response.status_code)

    threads = [threading.Thread(target=annotator, args=(name,)) for name in tokens for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # two writers per annotator race for every answer: exactly one wins each, the other gets 409
    assert Counter(statuses) == {200: len(jobs), 409: len(jobs)}
    assert store.count_answers() == len(jobs)


def test_a_database_that_cannot_be_written_stops_create_and_serve_in_one_line(tmp_path, capsys):
    config_path = tmp_path / "study.yaml"
    context = write_synthetic_run(tmp_path / "run", n_items=3, systems=SYSTEMS)
    (tmp_path / "a_file").write_text("not a folder")
    config_path.write_text(f"run_dir: {tmp_path / 'run'}\nannotate:\n  context: {context}\n  db_path: "
                           f"{tmp_path / 'a_file' / 'study.sqlite'}\n")
    assert main(["annotate", "create", str(config_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sefl-ray annotate: error: annotate: cannot create") and error.count("\n") == 1
    # serve: a valid study whose WAL file cannot be created (root ignores file modes; a folder in its way does not)
    good = load_config(config_path, [f"annotate.db_path={tmp_path / 'ok' / 'study.sqlite'}"])
    create_study(good)
    (tmp_path / "ok" / "study.sqlite-wal").mkdir()
    assert main(["annotate", "serve", str(config_path), "--set", f"annotate.db_path={tmp_path / 'ok' / 'study.sqlite'}",
                 "--set", f"annotate.port={free_port()}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sefl-ray annotate: error: annotate: cannot ") and "study database" in error and \
        error.count("\n") == 1


# ---- export into `sefl-ray agreement`, and the admin view ----

def cohen_kappa(labels_a: list[str], labels_b: list[str]) -> float:
    """Cohen's kappa by its definition: (p_o - p_e) / (1 - p_e)."""
    n = len(labels_a)
    observed = sum(a == b for a, b in zip(labels_a, labels_b)) / n
    count_a, count_b = Counter(labels_a), Counter(labels_b)
    expected = sum(count_a[c] * count_b[c] for c in set(labels_a) | set(labels_b)) / n ** 2
    return (observed - expected) / (1 - expected)


def answer_by_system(base: str, token: str, store: Store, slot: sqlite3.Row, question: str, system: str) -> None:
    """Answer as the annotator saw it: the side that shows `system` (or tie)."""
    item = store.item(slot["item_id"])
    shown_a = item["system_a"] if slot["shown_order"] == "AB" else item["system_b"]
    value = "tie" if system == "tie" else ("A" if system == shown_a else "B")
    assert post(base, token, slot=slot["slot_id"], question=question, value=value, revision=0).status_code == 200


def reference_labels(ratings: list[dict], dimension: str) -> dict[tuple[str, str], str]:
    """{(rater, item): label} aligned as `agreement` aligns them: to the systems of the item's first row."""
    reference, labels = {}, {}
    for row in ratings:
        if row["dimension"] != dimension:
            continue
        first = reference.setdefault(row["item_id"], (row["system_a"], row["system_b"]))
        swap = (row["system_a"], row["system_b"]) != first
        swapped = {"A": "B", "B": "A"}.get(row["choice"], "tie")
        labels[(row["rater"], row["item_id"])] = swapped if swap else row["choice"]
    return labels


def test_export_gives_agreement_the_kappa_of_the_answers_and_preference_pairs(tmp_path, capsys):
    config = study_config(tmp_path / "run", n_items=8)
    created = create_study(config)
    store = Store(created.db_path)
    tokens = {name: token_of(link) for name, link in created.annotator_links.items()}
    wanted = {"ann": [TUNED, TUNED, BASE, TUNED, "tie", TUNED, BASE, TUNED],
              "bea": [TUNED, BASE, BASE, TUNED, TUNED, "tie", BASE, TUNED]}
    with app_in_thread(store, port=free_port()) as base:
        for name, choices in wanted.items():
            for slot, system in zip(slots_of(store, name), choices):
                answer_by_system(base, tokens[name], store, slot, "overall", system)
                answer_by_system(base, tokens[name], store, slot, "tone", BASE)
    config_path = tmp_path / "study.yaml"
    config_path.write_text(json.dumps(config.model_dump(mode="json")))
    assert main(["annotate", "export", str(config_path)]) == 0
    out = Path(capsys.readouterr().out.strip())
    ratings = [json.loads(line) for line in (out / "ratings.jsonl").read_text().splitlines()]
    assert len(ratings) == 32 and {row["dimension"] for row in ratings} == {"overall", "tone"}
    assert all(row["item_id"].endswith(f"::{BASE}::{TUNED}") and row["order"] == "shown" for row in ratings)
    for row in ratings:  # unblinded: the choice names the system the annotator chose, through the shown order
        item = store.item(row["item_id"])
        length = {item["system_a"]: len(item["feedback_a"]), item["system_b"]: len(item["feedback_b"])}
        assert (row["length_a"], row["length_b"]) == (length[row["system_a"]], length[row["system_b"]])
    assert main(["agreement", str(out / "ratings.jsonl"), "--out", str(tmp_path / "agreement"), "--bootstrap",
                 "0"]) == 0
    report = json.loads((tmp_path / "agreement" / "agreement.json").read_text())
    labels = reference_labels(ratings, "overall")
    items = sorted({item for _, item in labels})
    expected = cohen_kappa([labels[("ann", item)] for item in items], [labels[("bea", item)] for item in items])
    (pair,) = report["dimensions"]["overall"]["pairwise"]
    assert pair["n"] == 8 and pair["cohen_kappa"] == pytest.approx(expected, abs=1e-12)
    # the win rates see systems, not sides: ann chose TUNED 5 times, BASE twice, tie once
    ann = next(w for w in report["dimensions"]["overall"]["win_rates"] if w["rater"] == "ann")
    assert {s["system"]: (s["wins"], s["losses"], s["ties"]) for s in ann["by_system"]}[TUNED] == (5, 2, 1)
    preferences = [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    agreed = [(a, b) for a, b in zip(wanted["ann"], wanted["bea"]) if a == b and a != "tie"]
    assert len(preferences) == len(agreed) == 5
    for pair_row in preferences:
        item = store.item(pair_row["item_id"])
        feedback = {item["system_a"]: item["feedback_a"], item["system_b"]: item["feedback_b"]}
        assert pair_row["chosen"] == feedback[pair_row["chosen_system"]]
        assert pair_row["rejected"] == feedback[pair_row["rejected_system"]]
        assert pair_row["prompt"].startswith("### ASSIGNMENT:")
    assert len((out / "answers.jsonl").read_text().splitlines()) == 32
    store.close()


def test_admin_view_shows_progress_self_consistency_gold_and_the_agreement_report(tmp_path):
    from sefl_ray.judge.agreement import agreement_report

    run = tmp_path / "run"
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"item_id": "q005", "question": "overall", "answer": TUNED}) + "\n")
    config = study_config(run, "annotate.repeats=2", f"annotate.gold={gold}")
    judge_rows = [{"item_id": f"q{i:03d}::{BASE}::{TUNED}", "rater": "judge1", "rater_kind": "judge",
                   "dimension": "overall", "choice": "B" if i % 3 else "A", "system_a": BASE, "system_b": TUNED,
                   "order": "both"} for i in range(6)]
    (run / "judge").mkdir()
    pq.write_table(pa.Table.from_pylist(judge_rows), run / "judge" / "ratings.parquet")
    created = create_study(config)
    store = Store(created.db_path)
    tokens = {name: token_of(link) for name, link in created.annotator_links.items()}
    with app_in_thread(store, port=free_port(), admin_bootstrap=0) as base:
        for name in tokens:
            for slot in slots_of(store, name):
                item = store.item(slot["item_id"])
                # ann always prefers TUNED (consistent on repeats, right on gold); bea goes by the shown side: A
                shown_a = item["system_a"] if slot["shown_order"] == "AB" else item["system_b"]
                system = TUNED if name == "ann" else shown_a
                answer_by_system(base, tokens[name], store, slot, "overall", system)
        admin = token_of(created.admin_link)
        rows = requests.get(f"{base}/admin/{admin}/progress.json", timeout=10).json()
        progress = {row["annotator"]: row for row in rows}
        live = requests.get(f"{base}/admin/{admin}/agreement.json", timeout=30).json()
        page = requests.get(f"{base}/admin/{admin}/", timeout=30).text
        exported = export_study(config)
    # 6 items less the gold one, overlap 2 of 2: 5 regular slots each, + 2 repeats + 1 gold; one answer per slot
    assert progress["ann"]["slots"] == 5 + 2 + 1 and progress["ann"]["answers"] == 8
    assert progress["ann"]["self_consistency"] == 1.0 and progress["ann"]["repeat_pairs"] == 2
    assert progress["ann"]["gold_accuracy"] == 1.0 and progress["ann"]["complete"] == 0  # only overall answered
    assert progress["bea"]["self_consistency"] == 0.0  # the same side twice is the other system the second time
    offline = agreement_report([exported / "ratings.jsonl", run / "judge" / "ratings.parquet"], n_bootstrap=0)
    assert live["dimensions"]["overall"]["pairwise"] == offline["dimensions"]["overall"]["pairwise"]
    assert live["dimensions"]["overall"]["vs_human_majority"] == offline["dimensions"]["overall"]["vs_human_majority"]
    assert [r["rater"] for r in live["raters"]] == ["ann", "bea", "judge1"]
    assert "Study progress" in page and "judge1" in page and "Fleiss" in page
    store.close()


# ---- SEFL spreadsheets ----

SEFL_SHEETS = {  # (Appendix_assignment, Preferred) per annotator; every annotator saw the same A/B order
    "expert1": ["A", "A", "B", "tie", "B", "A"],
    "expert2": ["A", "B", "B", "tie", "B", "A"],
    "expert3": ["A", "A", "B", "A", "tie", "B"],
}
SEFL_KEY = [("1", "gpt4o", "llama_tuned"), ("2", "llama_tuned", "gpt4o"), ("3", "gpt4o", "llama_tuned"),
            ("4", "llama_tuned", "gpt4o"), ("5", "gpt4o", "llama_tuned"), ("6", "llama_tuned", "gpt4o")]
# Fleiss' kappa of the table above by hand. Counts per item (A, B, tie): 1 (3,0,0) 2 (2,1,0) 3 (0,3,0) 4 (1,0,2)
# 5 (0,2,1) 6 (2,1,0). P_i = (sum n^2 - 3) / 6: 1, 1/3, 1, 1/3, 1/3, 1/3 -> mean P = 10/18 = 5/9.
# Category shares: A 8/18, B 7/18, tie 3/18 -> P_e = (64 + 49 + 9) / 324 = 122/324 = 61/162.
# kappa = (5/9 - 61/162) / (1 - 61/162) = (90/162 - 61/162) / (101/162) = 29/101.
SEFL_FLEISS = 29 / 101


def write_sefl_sheets(folder: Path) -> tuple[Path, list[Path]]:
    folder.mkdir()
    key = folder / "key.csv"
    key.write_text("Assignment,A,B\n" + "".join(f"{row},{a},{b}\n" for row, a, b in SEFL_KEY))
    paths = []
    for name, choices in SEFL_SHEETS.items():
        lines = ["Appendix_assignment,Assignment,Sense,Model A,Model B,Preferred,Comments,,"]
        for number, choice in enumerate(choices, 1):
            preferred = {"A": "Model A", "B": "b", "tie": "Tie"}[choice] if name == "expert2" else choice
            lines.append(f'{number},"Assignment {number}, with a comma",Yes,"Feedback A {number}","Longer feedback '
                         f'B {number}",{preferred},"a ""quoted"" note",,')
        lines.append(",,,,,,,,")  # the empty rows a spreadsheet leaves at the end
        path = folder / f"{name}.csv"
        path.write_text("\ufeff" + "\n".join(lines) + "\n")  # Excel's BOM
        paths.append(path)
    return key, paths


def test_sefl_spreadsheets_import_into_the_long_form_with_the_hand_computed_fleiss_kappa(tmp_path, capsys):
    key, sheets = write_sefl_sheets(tmp_path / "sefl")
    assert main(["annotate", "import", *map(str, sheets), "--key", str(key), "--out", str(tmp_path / "imported")]) == 0
    out = Path(capsys.readouterr().out.strip())
    ratings = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(ratings) == 18 and {row["rater"] for row in ratings} == set(SEFL_SHEETS)
    first = next(row for row in ratings if row["rater"] == "expert1" and row["item_id"].startswith("2::"))
    assert first == {"item_id": "2::gpt4o::llama_tuned", "rater": "expert1", "rater_kind": "human",
                     "dimension": "overall", "choice": "A", "system_a": "llama_tuned", "system_b": "gpt4o",
                     "order": "shown", "length_a": len("Feedback A 2"), "length_b": len("Longer feedback B 2")}
    assert main(["agreement", str(out), "--out", str(tmp_path / "agreement"), "--bootstrap", "0"]) == 0
    report = json.loads((tmp_path / "agreement" / "agreement.json").read_text())
    assert report["dimensions"]["overall"]["fleiss_kappa"]["value"] == pytest.approx(SEFL_FLEISS, abs=1e-12)


def test_sefl_import_names_the_file_and_row_of_a_bad_answer(tmp_path, capsys):
    key, sheets = write_sefl_sheets(tmp_path / "sefl")
    sheets[0].write_text(sheets[0].read_text().replace(",B,", ",maybe,", 1))
    assert main(["annotate", "import", *map(str, sheets), "--key", str(key), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"{sheets[0]} row 3: Preferred 'maybe' is not A, B or a tie" in error and error.count("\n") == 1


# ---- the pipeline and the judge stage ----

def test_after_infer_the_pipeline_creates_the_study_and_logs_the_links(tmp_path, caplog):
    from sefl_ray.pipeline import plan_stages
    from sefl_ray.stages import get_stage, stage_fingerprints

    run = tmp_path / "run"
    context = write_synthetic_run(run, n_items=4, systems=("base", "tuned"))
    config = load_config(None, [f"run_dir={run}", "annotate.enabled=true", f"annotate.context={context}"])
    off = load_config(None, [f"run_dir={run}", f"annotate.context={context}"])
    assert plan_stages({"stages": {}}, stage_fingerprints(config), run, config=config)["annotate"] == "upstream runs"
    assert plan_stages({"stages": {}}, stage_fingerprints(off), run, config=off)["annotate"] == "skip"
    stage = get_stage("annotate")
    assert stage.upstream == "infer"
    with caplog.at_level("INFO"):
        artifact = stage.run(config, pipeline=True)
    assert artifact == run / "annotate" / "study.sqlite" and artifact.exists()
    assert "annotator annotator3: http://127.0.0.1:8765/a/" in caplog.text and "admin: http" in caplog.text


def test_judge_picks_up_the_exported_ratings_when_human_ratings_is_empty(tmp_path):
    from sefl_ray.judge.run import human_ratings_paths

    config = load_config(None, [f"run_dir={tmp_path}"])
    assert human_ratings_paths(config) == []
    exported = tmp_path / "annotate" / "export" / "ratings.jsonl"
    exported.parent.mkdir(parents=True)
    exported.write_text('{"item_id": "x"}\n')
    assert human_ratings_paths(config) == [exported]
    named = load_config(None, [f"run_dir={tmp_path}", "judge.human_ratings=[mine.csv]"])
    assert human_ratings_paths(named) == ["mine.csv"]


# ---- in a real browser: two annotators, mouse and keyboard, a reload, a foreign item, a planted script ----

INJECTED = "<script>window.__pwned=1</script>"
# System-level choices per source item (q000 ... q009): what each annotator prefers on every criterion
ANN_CHOICES = [TUNED, TUNED, BASE, TUNED, "tie", TUNED, BASE, TUNED, TUNED, BASE]
BEA_CHOICES = [TUNED, BASE, BASE, TUNED, TUNED, "tie", BASE, TUNED, TUNED, TUNED]
CRITERIA = ("accuracy", "actionability", "conciseness", "tone", "overall")


def source_index(page) -> int:
    """Which source item the page shows, read from the feedback text the test wrote ("... note 7 ...")."""
    import re

    return int(re.search(r"note (\d+)", page.inner_text("#feedback-a .text"))[1])


def side_for(page, system: str) -> str:
    """The key/value that picks `system` on this page: the side whose feedback is that system's."""
    if system == "tie":
        return "tie"
    tuned_on_a = page.inner_text("#feedback-a .text").startswith("Careful")
    return "A" if (system == TUNED) == tuned_on_a else "B"


def layout(page) -> dict:
    return page.evaluate("""() => {
        const a = document.querySelector('#feedback-a').getBoundingClientRect();
        const b = document.querySelector('#feedback-b').getBoundingClientRect();
        const buttons = Array.from(document.querySelectorAll('.options button'), el => el.getBoundingClientRect());
        return {overflow: document.documentElement.scrollWidth > window.innerWidth, sideBySide: a.top === b.top,
                smallestTarget: Math.min(...buttons.map(r => Math.min(r.height, r.width)))};
    }""")


def test_two_annotators_rate_in_chromium_by_mouse_and_keyboard_and_agreement_gets_their_kappa(tmp_path, capsys):
    chromium = chromium_or_skip("the annotation app")
    from playwright.sync_api import sync_playwright

    feedback = {}
    for index in range(10):
        feedback[(BASE, index)] = f"Short note {index}: wrong."
        feedback[(TUNED, index)] = (f"Careful note {index}: the shadow idea is a common mix-up; look at how much of "
                                    "the lit half faces us." + (f" {INJECTED}" if index == 3 else ""))
    run = tmp_path / "run"
    context = write_synthetic_run(run, n_items=10, systems=SYSTEMS, feedback=feedback)
    config = load_config(None, [f"run_dir={run}", f"annotate.context={context}", "annotate.annotators=[ann,bea]",
                                "annotate.overlap=2"])
    created = create_study(config)
    store = Store(created.db_path)
    tokens = {name: token_of(link) for name, link in created.annotator_links.items()}
    bea_slot = slots_of(store, "bea")[0]["slot_id"]
    errors: list[str] = []
    with app_in_thread(store, port=free_port()) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            # ann, by mouse on a laptop screen; reloads half way through an item
            laptop = browser.new_context(viewport={"width": 1366, "height": 768})
            page = laptop.new_page()
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{base}/a/{tokens['ann']}/")
            assert page.url.endswith("/1") and layout(page) == {"overflow": False, "sideBySide": True,
                                                                "smallestTarget": layout(page)["smallestTarget"]}
            assert layout(page)["smallestTarget"] >= 44
            for position in range(1, 11):
                assert page.inner_text("header .where").startswith(f"Item {position} of 10")
                system = ANN_CHOICES[source_index(page)]
                page.click("fieldset[data-question=sense] button[data-value=yes]")
                for number, question in enumerate(CRITERIA):
                    if position == 6 and number == 2:  # half way: reload mid-item; nothing given is lost
                        page.wait_for_function("() => document.getElementById('status').textContent === 'Saved ✓'")
                        page.reload()
                        pressed = page.locator("button[aria-pressed=true]").count()
                        assert pressed == 3 and page.inner_text("#complete-count") == "5"
                        assert store.count_answers() == 5 * 7 + 3  # six answers and a comment per item
                    page.click(f"fieldset[data-question={question}] button[data-value={side_for(page, system)}]")
                if source_index(page) == 3:
                    planted = page.locator(".feedback .text", has_text=INJECTED)
                    assert planted.count() == 1 and planted.is_visible()
                    assert page.evaluate("() => typeof window.__pwned") == "undefined"
                page.fill("#comment", f"mouse comment {position}")
                page.click("#next")
                page.wait_for_url(f"**/a/{tokens['ann']}/{position + 1 if position < 10 else 'done'}")
            assert "All items done" in page.inner_text("h1")
            # ann tries bea's item: the page and the API both say 403, and nothing is stored
            foreign = page.goto(f"{base}/a/{tokens['ann']}/api/slot/{bea_slot}")
            assert foreign.status == 403
            status = page.evaluate("""([url, slot]) => fetch(url, {method: 'POST', headers: {'Content-Type':
                'application/json'}, body: JSON.stringify({slot: slot, question: 'overall', value: 'A', revision: 0})})
                .then(r => r.status)""", [f"{base}/a/{tokens['ann']}/api/answer", bea_slot])
            assert status == 403

            # bea, by keyboard on a tablet: six keys an item, the next item opens by itself
            tablet = browser.new_context(viewport={"width": 768, "height": 1024}, has_touch=True)
            page = tablet.new_page()
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{base}/a/{tokens['bea']}/")
            assert layout(page)["overflow"] is False and layout(page)["smallestTarget"] >= 44
            for position in range(1, 11):
                page.wait_for_url(f"**/a/{tokens['bea']}/{position}")
                system = BEA_CHOICES[source_index(page)]
                keys = ["y"] + [{"A": "a", "B": "b", "tie": "t"}[side_for(page, system)]] * len(CRITERIA)
                for key in keys:
                    page.keyboard.press(key)
            page.wait_for_url(f"**/a/{tokens['bea']}/done")
            phone = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True).new_page()
            phone.goto(f"{base}/a/{tokens['bea']}/1")
            assert layout(phone)["overflow"] is False and layout(phone)["sideBySide"] is False
        finally:
            browser.close()
    forbidden = "Failed to load resource: the server responded with a status of 403 (Forbidden)"
    assert errors == [forbidden, forbidden]  # the two tries at bea's item, and nothing else
    assert store.count_answers() == 10 * 7 + 10 * 6  # ann: six answers and a comment per item; bea: six keys

    config_path = tmp_path / "study.yaml"
    config_path.write_text(json.dumps(config.model_dump(mode="json")))
    assert main(["annotate", "export", str(config_path)]) == 0
    out = Path(capsys.readouterr().out.strip())
    assert main(["agreement", str(out / "ratings.jsonl"), "--out", str(tmp_path / "agreement"),
                 "--bootstrap", "0"]) == 0
    report = json.loads((tmp_path / "agreement" / "agreement.json").read_text())
    ratings = [json.loads(line) for line in (out / "ratings.jsonl").read_text().splitlines()]
    for dimension in CRITERIA:
        labels = reference_labels(ratings, dimension)
        items = sorted({item for _, item in labels})
        expected = cohen_kappa([labels[("ann", item)] for item in items], [labels[("bea", item)] for item in items])
        (pair,) = report["dimensions"][dimension]["pairwise"]
        assert pair["n"] == 10 and pair["cohen_kappa"] == pytest.approx(expected, abs=1e-12), dimension
    # and the systems behind those labels are the ones the test chose
    chosen = {(row["rater"], row["item_id"].split("::")[0]): row for row in ratings if row["dimension"] == "overall"}
    for name, choices in (("ann", ANN_CHOICES), ("bea", BEA_CHOICES)):
        for index, system in enumerate(choices):
            row = chosen[(name, f"q{index:03d}")]
            got = "tie" if row["choice"] == "tie" else row["system_a" if row["choice"] == "A" else "system_b"]
            assert got == system, (name, index)
    store.close()


def test_the_optional_rubric_asks_1_to_5_per_side_and_exports_scores_by_system(tmp_path):
    config = study_config(tmp_path / "run", "annotate.rubric=true", n_items=2)
    created = create_study(config)
    store = Store(created.db_path)
    token = token_of(created.annotator_links["ann"])
    slot = slots_of(store, "ann")[0]
    with app_in_thread(store, port=free_port()) as base:
        page = requests.get(f"{base}/a/{token}/1", timeout=10).text
        assert page.count('data-kind="score"') == 14 and "Feedback A, no giveaway: 1 = writes out" in page
        saved = post(base, token, slot=slot["slot_id"], question="rubric_tone_a", value="4", revision=0)
        refused = post(base, token, slot=slot["slot_id"], question="rubric_tone_b", value="6", revision=0)
        assert (saved.status_code, refused.status_code) == (200, 422)
    out = export_study(config)
    (score,) = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    item = store.item(slot["item_id"])
    shown_a = item["system_a"] if slot["shown_order"] == "AB" else item["system_b"]
    assert score == {"item_id": f"{item['source_item']}::{shown_a}", "rater": "ann", "rater_kind": "human",
                     "dimension": "tone", "score": 4}
    store.close()
