"""Export of records to a SEFL-shaped DatasetDict with a card, and pushing a folder to a (loopback) Hub."""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import ValidationError

from sefl_ray.export.dataset import ExportConfig, export_dataset, export_summary, read_exportable_records
from sefl_ray.data.hub import push_folder
from sefl_ray.data.records import RECORD_SCHEMA, record_id
from sefl_ray.data.sft import DEFAULT_SYSTEM_PROMPT, to_chat_messages
from sefl_ray.errors import ConfigError, InputNotFoundError, MissingSecretError

FINGERPRINT = "f00dfeedcafe0001"
TEACHER, STUDENT = "teacher-llm-70b", "student-llm-8b"
SEFL_COLUMNS = ["assignment", "prompt", "completion", "messages", "text", "errors", "feedback"]
OWN_COLUMNS = ["id", "source_id", "submission", "teacher_model", "student_model", "preset", "config_fingerprint"]
N_OK, N_FAILED = 13, 3  # after de-duplication: the duplicate id counts once, as ok


# ---------------------------------------------------------------------------------------------------- records kit


def make_record(index: int, *, status: str = "ok", finished_at: float = 1000.0) -> dict:
    """One record as synthesis writes it; a failed one has its conversation cut short and an `error`."""
    source_id = f"passage-{index:03d}"
    ok = status == "ok"
    errors = [f"Said the boiling point of water is {90 + index} °C", "Confused mass with weight"]
    return {
        "id": record_id(source_id, 0, FINGERPRINT),
        "source_id": source_id,
        "source_text": f"Passage {index}: water boils at 100 °C at sea level; mass is not weight.",
        "sample_index": 0,
        "preset": "sefl",
        "assignment": f"Assignment {index}: explain why water boils at 100 °C and how mass differs from weight.",
        "submission": f"Answer {index}: water boils at {90 + index} °C because it is hot. Mass and weight are one." if ok
        else None,
        "errors": errors if ok else [],
        "mistake_kinds": ["factual", "conceptual"],
        "feedback": f"Feedback {index}: 1. The boiling point is 100 °C at sea level, not {90 + index} °C; check a "
        "table of boiling points. 2. Mass is the amount of matter, weight is a force: revisit Newton's second law."
        if ok else None,
        "feedback_items": ["boiling point", "mass vs weight"] if ok else [],
        "messages": [
            {"role": "user", "content": f"Write an assignment about passage {index}."},
            {"role": "assistant", "content": f"Assignment {index}"},
        ],
        "teacher_model": TEACHER,
        "student_model": STUDENT,
        "usage": [
            {"role": "teacher", "endpoint": "vendor-a", "model": TEACHER, "calls": 2, "retries": 1,
             "prompt_tokens": 100 + index, "completion_tokens": 50, "cost_usd": 0.001},
            {"role": "student", "endpoint": "local", "model": STUDENT, "calls": 1, "retries": 0,
             "prompt_tokens": 80, "completion_tokens": 40 + index, "cost_usd": None},
        ],
        "status": status,
        "error": None if ok else "student reply is not valid JSON",
        "raw": None if ok else "{not json",
        "config_fingerprint": FINGERPRINT,
        "finished_at": finished_at,
    }


def write_records(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), path)


DUPLICATE = 0  # index written failed in the older file and ok in the newer one


def all_rows() -> tuple[list[dict], list[dict]]:
    """(older file rows, newer file rows): 12 ok + the duplicate failed, then 3 failed + the duplicate ok."""
    older = [make_record(i) for i in range(1, N_OK)] + [make_record(DUPLICATE, status="failed", finished_at=900.0)]
    newer = [make_record(100 + i, status="failed", finished_at=1100.0) for i in range(N_FAILED)]
    newer.append(make_record(DUPLICATE, finished_at=2000.0))
    return older, newer


@pytest.fixture
def records_dir(tmp_path) -> Path:
    older, newer = all_rows()
    write_records(tmp_path / "records" / "part-00000.parquet", older)
    write_records(tmp_path / "records" / "part-00001.parquet", newer)
    return tmp_path / "records"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """One export shared by the read-only checks (saving a DatasetDict is the slow part)."""
    base = tmp_path_factory.mktemp("export")
    older, newer = all_rows()
    write_records(base / "records" / "a.parquet", older)
    write_records(base / "records" / "b.parquet", newer)
    return export_dataset(read_exportable_records(base / "records"), base / "out", ExportConfig(valid_fraction=0.25),
                          seed=0)


def split_ids(out_dir: Path) -> dict[str, list[str]]:
    dataset = datasets.load_from_disk(str(out_dir / "hf"))
    return {split: list(dataset[split]["id"]) for split in dataset}


# ---------------------------------------------------------------------------------------------------- export


def test_export_has_sefl_columns_first_and_only_ok_rows(exported):
    dataset = datasets.load_from_disk(str(exported / "hf"))
    assert set(dataset) == {"train", "valid"}
    for split in dataset.values():
        assert split.column_names == SEFL_COLUMNS + OWN_COLUMNS
    assert dataset["valid"].num_rows == round(N_OK * 0.25) == 3
    assert dataset["train"].num_rows == N_OK - 3

    train_ids, valid_ids = list(dataset["train"]["id"]), list(dataset["valid"]["id"])
    assert not set(train_ids) & set(valid_ids)
    assert len(set(train_ids)) == len(train_ids) and len(set(valid_ids)) == len(valid_ids)
    expected_ok = {make_record(i)["id"] for i in [DUPLICATE, *range(1, N_OK)]}
    assert set(train_ids) | set(valid_ids) == expected_ok
    failed_ids = {make_record(100 + i)["id"] for i in range(N_FAILED)}
    assert not failed_ids & expected_ok


def test_rows_render_exactly_like_sefl(exported):
    dataset = datasets.load_from_disk(str(exported / "hf"))
    records = {row["id"]: row for row in [make_record(i) for i in [DUPLICATE, *range(1, N_OK)]]}
    rows = [*dataset["train"], *dataset["valid"]]
    for row in rows:
        record = records[row["id"]]
        assert row["assignment"] == record["assignment"]
        assert row["prompt"] == "### ASSIGNMENT:\n" + record["assignment"] + "\n\n### ANSWER:\n" + record["submission"]
        assert row["completion"] == "### FEEDBACK: " + record["feedback"]
        assert row["messages"] == [
            {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["completion"]},
        ]
        assert row["text"] == record["source_text"]
        assert row["errors"] == f"1. {record['errors'][0]}\n2. {record['errors'][1]}"
        assert row["feedback"] == record["feedback"]
        assert (row["source_id"], row["submission"], row["preset"]) == (
            record["source_id"], record["submission"], "sefl")
        assert (row["teacher_model"], row["student_model"], row["config_fingerprint"]) == (
            TEACHER, STUDENT, FINGERPRINT)
    duplicate = next(row for row in rows if row["id"] == make_record(DUPLICATE)["id"])
    assert duplicate["feedback"].startswith("Feedback 0:"), "the newer ok row won over the older failed one"


def test_parquet_files_match_the_saved_dataset(exported):
    dataset = datasets.load_from_disk(str(exported / "hf"))
    for split in ("train", "valid"):
        table = pq.read_table(exported / "parquet" / f"{split}.parquet")
        assert table.column_names == SEFL_COLUMNS + OWN_COLUMNS
        assert table.to_pylist() == dataset[split].to_list()


def test_dataset_card_front_matter_and_numbers(exported):
    card = (exported / "README.md").read_text()
    assert card.startswith("---\n")
    front_matter = yaml.safe_load(card.split("---\n")[1])
    assert front_matter["license"] == "other"
    assert front_matter["language"] == ["en"]
    assert front_matter["task_categories"] == ["text-generation"]
    (config,) = front_matter["configs"]
    assert config["config_name"] == "default"
    assert {entry["split"]: entry["path"] for entry in config["data_files"]} == {
        "train": "parquet/train.parquet", "valid": "parquet/valid.parquet"}
    for entry in config["data_files"]:
        assert (exported / entry["path"]).is_file()

    assert "| train | 10 |" in card and "| valid | 3 |" in card
    assert (f"{N_OK + N_FAILED} records were synthesized and gated: {N_OK} passed every gate, 0 were filtered by a "
            f"quality gate, {N_FAILED} failed") in card
    assert FINGERPRINT in card and TEACHER in card and STUDENT in card
    assert "synthesized by sefl-ray" in card
    # usage over the 16 rows read_records keeps: teacher 2 calls and $0.001 each, student cost unknown
    indices = [DUPLICATE, *range(1, N_OK), *range(100, 100 + N_FAILED)]
    teacher_prompt = sum(100 + i for i in indices)
    student_completion = sum(40 + i for i in indices)
    assert f"| teacher | `{TEACHER}` | 32 | 16 | {teacher_prompt} | 800 | $0.0160 |" in card
    assert f"| student | `{STUDENT}` | 16 | 0 | 1280 | {student_completion} | unpriced |" in card

    summary = export_summary(exported)
    assert summary["splits"] == {"train": 10, "valid": 3}
    assert summary["records"] == {"total": 16, "ok": 13, "failed": 3, "filtered": 0, "exported": 13}
    assert summary["config_fingerprints"] == [FINGERPRINT]


def test_split_is_seeded_and_independent_of_file_order(tmp_path, records_dir):
    config = ExportConfig(valid_fraction=0.25)
    first = split_ids(export_dataset(read_exportable_records(records_dir), tmp_path / "a", config, seed=0))
    again = split_ids(export_dataset(read_exportable_records(records_dir), tmp_path / "b", config, seed=0))
    assert first == again

    # The same records spread over files differently, in another order: the same split.
    older, newer = all_rows()
    shuffled = older + newer
    random.Random(7).shuffle(shuffled)
    duplicate_id = make_record(DUPLICATE)["id"]
    other_dir = tmp_path / "other-records"
    write_records(other_dir / "z.parquet", [row for row in shuffled if row["id"] != duplicate_id][:8])
    write_records(other_dir / "a.parquet", [row for row in shuffled if row["id"] != duplicate_id][8:])
    write_records(other_dir / "m" / "dup.parquet", [row for row in shuffled if row["id"] == duplicate_id])
    assert split_ids(export_dataset(read_exportable_records(other_dir), tmp_path / "c", config, seed=0)) == first

    other_seed = split_ids(export_dataset(read_exportable_records(records_dir), tmp_path / "d", config, seed=1))
    assert set(other_seed["valid"]) != set(first["valid"])
    assert set(other_seed["valid"]) | set(other_seed["train"]) == set(first["valid"]) | set(first["train"])

    # Exporting again into the same folder replaces the old export instead of mixing with it.
    assert split_ids(export_dataset(read_exportable_records(records_dir), tmp_path / "d", config, seed=0)) == first


def test_min_valid_include_failed_and_system_prompt(tmp_path, records_dir):
    config = ExportConfig(valid_fraction=0.01, min_valid=2, include_failed=True, system_prompt="Be brief.")
    out = export_dataset(read_exportable_records(records_dir), tmp_path / "out", config, seed=3,
                         dataset_name="tiny test set")
    dataset = datasets.load_from_disk(str(out / "hf"))
    assert dataset["valid"].num_rows == 2 and dataset["train"].num_rows == N_OK + N_FAILED - 2
    assert dataset["train"].column_names == SEFL_COLUMNS + OWN_COLUMNS + ["status"]
    statuses = list(dataset["train"]["status"]) + list(dataset["valid"]["status"])
    assert statuses.count("failed") == N_FAILED
    assert dataset["train"][0]["messages"][0] == {"role": "system", "content": "Be brief."}
    card = (out / "README.md").read_text()
    assert yaml.safe_load(card.split("---\n")[1])["pretty_name"] == "tiny test set"
    assert "plus failed ones" in card


def test_train_keeps_a_row_and_valid_is_never_empty(tmp_path):
    write_records(tmp_path / "records" / "two.parquet", [make_record(5), make_record(6)])
    config = ExportConfig(valid_fraction=0.9, min_valid=5)
    out = export_dataset(read_exportable_records(tmp_path / "records"), tmp_path / "out", config)
    dataset = datasets.load_from_disk(str(out / "hf"))
    assert (dataset["train"].num_rows, dataset["valid"].num_rows) == (1, 1)
    write_records(tmp_path / "one" / "one.parquet", [make_record(5)])
    with pytest.raises(InputNotFoundError, match="at least 2"):
        export_dataset(read_exportable_records(tmp_path / "one"), tmp_path / "out1", ExportConfig())


def test_missing_or_unusable_records_are_clear_errors(tmp_path):
    with pytest.raises(InputNotFoundError, match="records folder not found"):
        read_exportable_records(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="no readable records"):
        read_exportable_records(tmp_path / "empty")
    write_records(tmp_path / "failed" / "x.parquet", [make_record(i, status="failed") for i in range(3)])
    with pytest.raises(InputNotFoundError, match=r"none of the 3 records is ok \(3 failed"):
        export_dataset(read_exportable_records(tmp_path / "failed"), tmp_path / "out", ExportConfig())
    with pytest.raises(InputNotFoundError, match="run the export first"):
        export_summary(tmp_path / "out")


def test_export_config_is_strict():
    for bad in ({"valid_fraction": 0}, {"valid_fraction": 1.0}, {"min_valid": 0}, {"valid_frac": 0.2}):
        with pytest.raises(ValidationError):
            ExportConfig(**bad)


def test_chat_messages_without_feedback_are_a_generation_prompt():
    messages = to_chat_messages("Do X.", "I did Y.")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == "### ASSIGNMENT:\nDo X.\n\n### ANSWER:\nI did Y."


# ---------------------------------------------------------------------------------------------------- push


class FakeHub:
    """Just enough of the Hub's HTTP API for `create_repo` + `upload_folder` (huggingface_hub 2.4): repo creation
    (409 when it exists), README metadata validation, preupload (every file 'regular', so content travels inline
    in the commit, base64) and the NDJSON commit. Every request is recorded; anything else answers 404."""

    def __init__(self, token: str):
        self.token = token
        self.requests: list[dict] = []
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                hub._handle(self, "GET")

            def do_POST(self):
                hub._handle(self, "POST")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        path = handler.path.split("?")[0]
        self.requests.append({"method": method, "path": path, "headers": {k.lower(): v for k, v in handler.headers.items()},
                              "body": body})
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            return self._reply(handler, 401, {"error": "Invalid credentials in Authorization header"})
        parts = path.strip("/").split("/")
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            repo_key = f"{payload['type']}s/{payload['organization']}/{payload['name']}"
            if repo_key in self.repos:
                return self._reply(handler, 409, {"error": "You already created this dataset repo",
                                                  "url": self._repo_url(repo_key)})
            self.repos[repo_key] = {}
            return self._reply(handler, 200, {"url": self._repo_url(repo_key), "name": repo_key})
        if method == "POST" and path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            yaml.safe_load(content.split("---\n")[1])  # a broken front matter fails the request loudly
            return self._reply(handler, 200, {"errors": [], "warnings": []})
        if method == "POST" and len(parts) == 6 and parts[0] == "api" and parts[4] in ("preupload", "commit"):
            repo_key = "/".join(parts[1:4])
            if repo_key not in self.repos:
                return self._reply(handler, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            if parts[4] == "preupload":
                files = json.loads(body)["files"]
                return self._reply(handler, 200, {"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
                ]})
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            files = {}
            for line in lines[1:]:
                assert line["key"] == "file" and line["value"]["encoding"] == "base64", line
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            self.repos[repo_key].update(files)
            oid = f"{len(self.commits) + 1:040x}"
            self.commits.append({"repo": repo_key, "revision": parts[5], "header": lines[0], "files": files})
            return self._reply(handler, 200, {
                "commitUrl": f"{self.url}/{repo_key}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None})
        return self._reply(handler, 404, {"error": f"fake hub does not serve {method} {path}"})

    def _repo_url(self, repo_key: str) -> str:
        """Like the Hub: models live at /{id}, datasets at /datasets/{id}."""
        return f"{self.url}/{repo_key.removeprefix('models/')}"

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)


SECRET = "hf_fake_secret_token_0123456789"


@pytest.fixture
def fake_hub(monkeypatch):
    """A loopback Hub, with huggingface_hub allowed online (conftest sets HF_HUB_OFFLINE) but pointed at it for
    everything, so not even a stray telemetry or registry call can leave the machine."""
    from huggingface_hub import constants

    with FakeHub(SECRET) as hub:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setenv("SEFL_TEST_HF_TOKEN", SECRET)
        yield hub


def folder_contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dry_run_lists_files_and_makes_no_request(exported, fake_hub, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("SEFL_TEST_HF_TOKEN")  # a dry run needs no token
    monkeypatch.setattr(huggingface_hub, "HfApi", None)  # any attempt to build a client would fail
    result = push_folder(exported, "me/feedback", repo_type="dataset", token_env="SEFL_TEST_HF_TOKEN",
                         endpoint=fake_hub.url, dry_run=True)
    assert result == {"repo_id": "me/feedback", "files": sorted(folder_contents(exported)), "dry_run": True}
    assert {"README.md", "parquet/train.parquet", "parquet/valid.parquet", "hf/dataset_dict.json"} <= set(
        result["files"])
    assert fake_hub.requests == []


def test_push_creates_the_repo_and_commits_every_file(exported, fake_hub, caplog):
    caplog.set_level(logging.DEBUG)
    result = push_folder(exported, "me/feedback", repo_type="dataset", private=True,
                         token_env="SEFL_TEST_HF_TOKEN", endpoint=fake_hub.url, commit_message="Export v1")
    expected = folder_contents(exported)
    assert result["dry_run"] is False and result["repo_id"] == "me/feedback"
    assert result["url"] == f"{fake_hub.url}/datasets/me/feedback"
    assert result["files"] == sorted(expected)

    calls = [(r["method"], r["path"]) for r in fake_hub.requests]
    assert calls == [
        ("POST", "/api/repos/create"),
        ("POST", "/api/validate-yaml"),
        ("POST", "/api/datasets/me/feedback/preupload/main"),
        ("POST", "/api/datasets/me/feedback/commit/main"),
    ]
    create = json.loads(fake_hub.requests[0]["body"])
    assert create == {"name": "feedback", "organization": "me", "visibility": "private", "type": "dataset"}
    for request in fake_hub.requests:
        assert request["headers"]["authorization"] == f"Bearer {SECRET}"
    (commit,) = fake_hub.commits
    assert commit["header"]["value"]["summary"] == "Export v1"
    assert commit["files"] == expected, "every file arrived, byte for byte"
    assert result["commit_url"].endswith(f"/commit/{1:040x}")
    assert SECRET not in repr(result) and SECRET not in caplog.text

    # Pushing again: the repo exists (409, accepted by exist_ok) and a second commit lands.
    push_folder(exported, "me/feedback", repo_type="dataset", token_env="SEFL_TEST_HF_TOKEN", endpoint=fake_hub.url)
    assert len(fake_hub.commits) == 2 and fake_hub.commits[1]["files"] == expected


def test_push_a_model_folder_to_the_model_namespace(tmp_path, fake_hub):
    (tmp_path / "model" / "sub").mkdir(parents=True)
    (tmp_path / "model" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "model" / "sub" / "notes.txt").write_text("hello")
    (tmp_path / "model" / ".git").mkdir()
    (tmp_path / "model" / ".git" / "HEAD").write_text("ref: refs/heads/main")
    result = push_folder(tmp_path / "model", "me/tiny", repo_type="model", token_env="SEFL_TEST_HF_TOKEN",
                         endpoint=fake_hub.url)
    assert result["url"] == f"{fake_hub.url}/me/tiny"
    assert result["files"] == ["config.json", "sub/notes.txt"]
    assert [r["path"] for r in fake_hub.requests][-1] == "/api/models/me/tiny/commit/main"
    assert fake_hub.commits[0]["files"] == {"config.json": b'{"model_type": "llama"}', "sub/notes.txt": b"hello"}


def test_push_without_token_or_with_a_bad_one(exported, fake_hub, monkeypatch):
    monkeypatch.delenv("SEFL_TEST_HF_TOKEN")
    with pytest.raises(MissingSecretError, match="SEFL_TEST_HF_TOKEN"):
        push_folder(exported, "me/feedback", repo_type="dataset", token_env="SEFL_TEST_HF_TOKEN",
                    endpoint=fake_hub.url)
    assert fake_hub.requests == []

    monkeypatch.setenv("SEFL_TEST_HF_TOKEN", "hf_wrong")
    with pytest.raises(ConfigError, match="HTTP 401.*SEFL_TEST_HF_TOKEN") as excinfo:
        push_folder(exported, "me/feedback", repo_type="dataset", token_env="SEFL_TEST_HF_TOKEN",
                    endpoint=fake_hub.url)
    assert "hf_wrong" not in str(excinfo.value)
    assert fake_hub.commits == []


def test_push_refuses_offline_mode_and_bad_inputs(tmp_path, fake_hub, monkeypatch):
    from huggingface_hub import constants

    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("a")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        push_folder(tmp_path / "folder", "me/x", repo_type="dataset", token_env="SEFL_TEST_HF_TOKEN",
                    endpoint=fake_hub.url)
    with pytest.raises(InputNotFoundError):
        push_folder(tmp_path / "missing", "me/x", repo_type="dataset", dry_run=True)
    with pytest.raises(ConfigError, match="repo_type"):
        push_folder(tmp_path / "folder", "me/x", repo_type="space", dry_run=True)
    assert fake_hub.requests == []
