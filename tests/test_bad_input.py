"""The bad-input matrix (issue 17, item 10): every command, handed each kind of bad input a user can hand it, exits 2
with one line `sefl-ray <command>: error: ...` on stderr, no traceback, and leaves every file that was there before
as it was.

The kinds: a missing config file and a missing input file or folder, malformed YAML, an unknown key, a wrong type,
an empty dataset, a corrupt parquet file (cut short), a CSV that starts with a UTF-8 byte-order mark (it must read
as if it had none: the case then fails on a later, distinct check, or succeeds), and a run dir under a regular file
(ENOTDIR: the tests run as root, so a chmod would not stop a write). A command has the cases its inputs allow: those
without a config (report, merge, agreement, push, annotate import, models prepare) get the file-level ones (a
malformed or non-UTF-8 file, a wrong value, a bad option).

The commands run in-process through `sefl_ray.cli.main`, so the matrix costs seconds, not a Python start per case;
an exception escaping `main` is a traceback and fails its case. Ray may not start, no embedded model be converted and
no app served before a bad input is caught (each raises here if tried), except in the pipeline's data cases: the
pipeline starts Ray before its stages read their inputs. Under pytest log records do not reach stderr (pytest's log
capture owns the root logger), so stderr holds exactly what the CLI printed; the subprocess checks at the end run
the real console script, where INFO lines may come first and the error is the last line. Every file under the test's
folder is compared byte for byte before and after (the run lock's `.lock` aside; a file the durable layer sets
aside, renamed and never deleted, counts as kept).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from sefl_ray.cli import main
from sefl_ray.durable import SET_ASIDE_MARK

SEFL_RAY = str(Path(sys.executable).parent / "sefl-ray")
BOM = "\ufeff"
PASSAGE = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. " * 5  # over min_chars
SHEET_HEADER = "Appendix_assignment,Assignment,Sense,Model A,Model B,Preferred,Comments\n"
RATING_COLUMNS = ["item_id", "rater", "rater_kind", "choice"]


# Cases that fail today for a reason outside the files this matrix came with: each names the file to fix.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


# ---------------------------------------------------------------- the folder a case works in


class Workspace:
    """A test's folder: a run dir holding what an earlier run left (a file in each stage's folder), and helpers that
    write a case's inputs and config."""

    def __init__(self, root: Path, request, monkeypatch):
        self.root, self._request, self.monkeypatch = root, request, monkeypatch
        self.run_dir = root / "run"
        self.inputs = root / "inputs"
        self.inputs.mkdir()
        earlier_run = {
            "manifest.json": json.dumps({"stages": {"synth": {"status": "done", "fingerprint": "earlier"}}}),
            "config.yaml": "run_dir: run\n",
            "synth/config.yaml": "synth: {}\n", "synth/plan.jsonl": '{"id": "r1"}\n',
            "export/README.md": "# earlier export\n", "export/train.jsonl": '{"id": "r1"}\n',
            "train/config.yaml": "train: {}\n", "train/notes.txt": "earlier training\n",
            "infer/base/config.yaml": "infer: {}\n", "judge/config.yaml": "judge: {}\n",
            "report/report.html": "<html>earlier</html>\n",
        }
        for name, text in earlier_run.items():
            self.write(self.run_dir / name, text)

    @property
    def tiny_model_dir(self) -> Path:
        return self._request.getfixturevalue("tiny_model_dir")

    @staticmethod
    def write(path: Path, content: str | bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def config(self, extra: dict | None = None, *, text: str | None = None, run_dir: Path | None = None) -> str:
        """The run dir, no models to prepare, one endpoint `local` that nothing reaches (a bad input is caught
        before any call), and `extra` merged over that."""
        base = {"run_dir": str(run_dir or self.run_dir), "models": {"prepare": []},
                "endpoints": [{"name": "local", "model": "m", "base_url": "http://127.0.0.1:9/v1"}]}
        return str(self.write(self.root / "config.yaml",
                              text if text is not None else yaml.safe_dump(_merged(base, extra or {}))))

    def missing(self, name: str) -> str:
        return str(self.inputs / name)

    def text(self, name: str, content: str | bytes) -> str:
        return str(self.write(self.inputs / name, content))

    def jsonl(self, name: str, rows: list) -> str:
        return self.text(name, "".join(json.dumps(row) + "\n" for row in rows))

    def empty_parquet(self, name: str, *columns: str) -> str:
        path = self.inputs / name
        pq.write_table(pa.schema([(column, pa.string()) for column in columns]).empty_table(), path)
        return str(path)

    def corrupt_parquet(self, path: Path | None = None) -> str:
        """A real parquet file cut short, as a killed writer or a bad copy leaves it: no footer."""
        path = path or self.inputs / "corrupt.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([{"item_id": str(i), "text": PASSAGE} for i in range(20)]), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return str(path)

    def bom_csv(self, name: str, header: list[str], rows: list[list[str]]) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
        return self.text(name, (BOM + out.getvalue()).encode("utf-8"))

    def outputs(self, system: str, item_ids: list[str]) -> str:
        """One system's outputs as judge and annotate read them by path (item_id, prompt, system, feedback)."""
        return self.jsonl(f"{system}.jsonl", [
            {"item_id": item, "prompt": f"### ASSIGNMENT:\nExplain item {item}.\n\n### ANSWER:\nAn answer.",
             "system": system, "feedback": f"{system} says: look again at item {item}."} for item in item_ids])

    def blocked(self) -> Path:
        """A folder whose parent is a regular file: every mkdir under it is ENOTDIR, root or not."""
        return self.write(self.root / "blocker", "a file, not a folder\n") / "run"

    def sheets(self, annotator_sheet: str | bytes) -> tuple[str, str]:
        """(key CSV, annotator CSV `ann1.csv`) for `annotate import`."""
        key = self.text("key.csv", "Assignment,A,B\nq1,base,tuned\nq2,base,tuned\n")
        return key, self.text("ann1.csv", annotator_sheet)


def _merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# ---------------------------------------------------------------- running a command, and what a case expects


@dataclass
class Case:
    argv: list[str]
    fragments: tuple[str, ...] = ()  # each is in the error line
    succeeds: Callable[[Workspace], None] | None = None  # the input is fine after all: check what was written
    may_rewrite: tuple[str, ...] = ()  # files (relative to the workspace) the command rewrites by design
    needs_ray: bool = False


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    lines: list[str] = field(default_factory=list)


def run_main(argv: list[str], capfd) -> Outcome:
    capfd.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capfd.readouterr()
    return Outcome(code, out, err, err.strip().splitlines())


def assert_one_line_error(outcome: Outcome, command: str, fragments=()) -> str:
    assert outcome.code == 2, f"exit {outcome.code}\nstdout: {outcome.out}\nstderr: {outcome.err}"
    assert "Traceback" not in outcome.err, outcome.err
    assert len(outcome.lines) == 1, f"expected one line on stderr, got:\n{outcome.err}"
    line = outcome.lines[0]
    assert line.startswith(f"sefl-ray {command}") and ": error: " in line, line
    assert BOM not in line and "\\ufeff" not in line, line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in: {line}"
    return line


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file() and path.name != ".lock"}


def assert_nothing_lost(before: dict[str, bytes], root: Path, may_rewrite=()) -> None:
    after = snapshot(root)
    lost = []
    for name, data in before.items():
        if after.get(name) == data or (name in may_rewrite and name in after):
            continue
        set_aside = [other for other in after if other.startswith(f"{name}{SET_ASIDE_MARK}") and after[other] == data]
        if name not in after and set_aside:
            continue
        lost.append(f"{name}: {'gone' if name not in after else 'changed'}")
    assert not lost, f"files that were there before: {lost}"


# ---------------------------------------------------------------- the config-level cases of every config command


CONFIG_COMMANDS = {  # command: (argv before CONFIG, an unknown key, a wrong type, the keys the two errors name)
    "pipeline": (["pipeline"], {"ray": {"num_cpu": 2}}, {"ray": {"num_cpus": "two"}}, "ray.num_cpu", "ray.num_cpus"),
    "synth": (["synth"], {"synth": {"sources": {"paht": "x.jsonl"}}}, {"synth": {"concurrency": "lots"}},
              "synth.sources.paht", "synth.concurrency"),
    "gate": (["gate"], {"gate": {"dedup": {"treshold": 0.5}}}, {"gate": {"llm_gates": "sense"}},
             "gate.dedup.treshold", "gate.llm_gates"),
    "export": (["export"], {"export": {"valid_fractoin": 0.2}}, {"export": {"valid_fraction": "half"}},
               "export.valid_fractoin", "export.valid_fraction"),
    "train": (["train"], {"train": {"learning_rate": 1e-4}}, {"train": {"epochs": "many"}}, "train.learning_rate",
              "train.epochs"),
    "infer": (["infer"], {"infer": {"inptu": "x.jsonl"}}, {"infer": {"max_new_tokens": [1, 2]}}, "infer.inptu",
              "infer.max_new_tokens"),
    "judge": (["judge"], {"judge": {"judgez": ["local"]}}, {"judge": {"judges": 5}}, "judge.judgez",
              "judge.judges"),
    "annotate create": (["annotate", "create"], {"annotate": {"anotators": ["a"]}},
                        {"annotate": {"overlap": "all"}}, "annotate.anotators", "annotate.overlap"),
    "annotate serve": (["annotate", "serve"], {"annotate": {"prot": 1}}, {"annotate": {"port": "high"}},
                       "annotate.prot", "annotate.port"),
    "annotate export": (["annotate", "export"], {"annotate": {"db": "x"}}, {"annotate": {"repeats": [1]}},
                        "annotate.db", "annotate.repeats"),
    "endpoints": (["endpoints"], {"endpoints": [{"name": "x", "modle": "m"}]},
                  {"endpoints": [{"name": "x", "max_concurrency": "all"}]}, "endpoints.0.modle",
                  "endpoints.0.max_concurrency"),
}

CASES: dict[tuple[str, str], Callable[[Workspace], Case]] = {}

for _command, (_argv, _unknown, _wrong, _unknown_key, _wrong_key) in CONFIG_COMMANDS.items():
    CASES[_command, "missing config"] = lambda w, argv=_argv: Case(
        [*argv, str(w.root / "no-such.yaml")], ("config file not found", "no-such.yaml"))
    CASES[_command, "malformed yaml"] = lambda w, argv=_argv: Case(
        [*argv, w.config(text="synth:\n  sources: {path: [x.jsonl\n")], ("malformed YAML at line",))
    CASES[_command, "unknown key"] = lambda w, argv=_argv, unknown=_unknown, key=_unknown_key: Case(
        [*argv, w.config(unknown)], (f"unknown key '{key}'",))
    CASES[_command, "wrong type"] = lambda w, argv=_argv, wrong=_wrong, key=_wrong_key: Case(
        [*argv, w.config(wrong)], (f"{key}: Input should be",))


def case(command: str, kind: str):
    def register(build: Callable[[Workspace], Case]) -> Callable[[Workspace], Case]:
        CASES[command, kind] = build
        return build
    return register


def _blocked_run_dir_case(*argv: str) -> Callable[[Workspace], Case]:
    """The stage commands take the run lock first, so a run dir they cannot create stops them before anything."""
    return lambda w: Case([*argv, w.config(run_dir=w.blocked())], ("cannot write the run dir", "Not a directory"))


for _command in ("pipeline", "synth", "gate", "export", "train", "infer", "judge"):
    CASES[_command, "run dir not writable"] = _blocked_run_dir_case(_command)


# ---------------------------------------------------------------- synth (and the pipeline, whose synth reads first)


def _sources(path: str) -> dict:
    return {"synth": {"sources": {"path": path}}}


@case("synth", "missing input")
def _synth_missing(w):
    return Case(["synth", w.config(_sources(w.missing("passages.jsonl")))],
                ("synth.sources.path", "passages.jsonl", "does not exist"))


@case("synth", "empty dataset")
def _synth_empty(w):
    return Case(["synth", w.config(_sources(w.jsonl("passages.jsonl", [])))],
                ("synth.sources.path", "passages.jsonl", "holds no rows"))


@case("synth", "corrupt parquet")
def _synth_corrupt(w):
    return Case(["synth", w.config(_sources(w.corrupt_parquet()))],
                ("synth.sources.path", "corrupt.parquet", "not a readable parquet file"))


@case("synth", "csv with bom")
def _synth_bom(w):
    # read right, the `text` column is found and the passages then fail the length filter; read wrong, the first
    # column is '\ufefftext' and the error says there is no column 'text'
    path = w.bom_csv("passages.csv", ["text", "id"], [["too short", "1"], ["also short", "2"]])
    return Case(["synth", w.config(_sources(path))], ("no passages in", "between 200 and 6000 characters"))


@case("synth", "row not an object")
def _synth_row_not_an_object(w):
    return Case(["synth", w.config(_sources(w.jsonl("passages.jsonl", [{"text": PASSAGE}, "just a string"])))],
                ("passages.jsonl row 2 is a str, not an object",))


def _through_the_pipeline(synth_case: Callable[[Workspace], Case]) -> Callable[[Workspace], Case]:
    """The same input through `sefl-ray pipeline`, which saves the resolved config.yaml and records the failed
    stage in manifest.json by design, and starts Ray before synth reads its sources."""
    def pipeline_case(w: Workspace) -> Case:
        inner = synth_case(w)
        return Case(["pipeline", *inner.argv[1:]], inner.fragments, may_rewrite=("run/manifest.json",
                    "run/config.yaml"), needs_ray=True)
    return pipeline_case


for _kind, _synth_case in (("missing input", _synth_missing), ("empty dataset", _synth_empty),
                           ("corrupt parquet", _synth_corrupt), ("csv with bom", _synth_bom)):
    CASES["pipeline", _kind] = _through_the_pipeline(_synth_case)


# ---------------------------------------------------------------- gate and export: synth's plan and records, the gated ones


@case("gate", "missing input")
def _gate_missing(w):
    return Case(["gate", w.config({"run_dir": str(w.root / "fresh-run")})],
                ("plan.jsonl not found", "run the synth stage first"))


@case("gate", "empty dataset")
def _gate_empty(w):
    (w.run_dir / "synth" / "records").mkdir()
    return Case(["gate", w.config()], ("no readable records",))


@case("gate", "corrupt parquet")
def _gate_corrupt(w):
    w.corrupt_parquet(w.run_dir / "synth" / "records" / "part-0.parquet")  # set aside by the reader: kept
    return Case(["gate", w.config()], ("no readable records",))


@case("export", "missing input")
def _export_missing(w):
    return Case(["export", w.config({"run_dir": str(w.root / "fresh-run")})],
                ("records.parquet not found", "run the gate stage first"))


@case("export", "corrupt parquet")
def _export_corrupt(w):
    w.corrupt_parquet(w.run_dir / "gate" / "records.parquet")
    return Case(["export", w.config()], ("records.parquet", "unreadable", "run the gate stage again"))


# ---------------------------------------------------------------- train: train.dataset


def _train(w: Workspace, dataset: str, **more) -> list[str]:
    return ["train", w.config({"train": {"dataset": dataset, "model": str(w.tiny_model_dir), **more}})]


@case("train", "missing input")
def _train_missing(w):
    return Case(["train", w.config({"train": {"dataset": w.missing("sft.jsonl")}})],
                ("train.dataset", "sft.jsonl", "does not exist"))


@case("train", "empty dataset")
def _train_empty(w):
    return Case(_train(w, w.empty_parquet("sft.parquet", "prompt", "completion")),
                ("train.dataset", "sft.parquet", "holds no rows"))


@case("train", "corrupt parquet")
def _train_corrupt(w):
    return Case(_train(w, w.corrupt_parquet()), ("train.dataset", "corrupt.parquet", "not a readable parquet file"))


@case("train", "csv with bom")
def _train_bom(w):
    # read right, the one row is an example, too few to fill a step of 64; read wrong, it has no `prompt`
    path = w.bom_csv("sft.csv", ["prompt", "completion"], [["Explain photosynthesis.", "It makes sugar."]])
    return Case(_train(w, path, batch_size=64), ("cannot fill one step",))


# ---------------------------------------------------------------- infer: infer.input


def _infer(w: Workspace, path: str, **more) -> list[str]:
    return ["infer", w.config({"infer": {"input": path, **more}})]


@case("infer", "missing input")
def _infer_missing(w):
    return Case(_infer(w, w.missing("test.jsonl")), ("infer.input", "test.jsonl", "does not exist"))


@case("infer", "empty dataset")
def _infer_empty(w):
    return Case(_infer(w, w.text("test.csv", "id,prompt\n")), ("infer.input", "test.csv", "no rows"))


@case("infer", "corrupt parquet")
def _infer_corrupt(w):
    return Case(_infer(w, w.corrupt_parquet()), ("infer.input", "corrupt.parquet", "not a readable parquet file"))


@case("infer", "csv with bom")
def _infer_bom(w):
    # read right, the rows have a `prompt` and infer goes on to its endpoint, which the config does not list; read
    # wrong, the first column is '\ufeffprompt' and the rows have no prompt
    path = w.bom_csv("test.csv", ["prompt", "id"], [["Explain it.", "1"]])
    return Case(_infer(w, path, endpoint="unlisted"), ("no endpoint named 'unlisted'",))


# ---------------------------------------------------------------- judge: judge.inputs


def _judge(w: Workspace, *paths: str) -> list[str]:
    return ["judge", w.config({"judge": {"inputs": list(paths)}})]


@case("judge", "missing input")
def _judge_missing(w):
    return Case(_judge(w, w.missing("a.jsonl"), w.outputs("b", ["1"])), ("judge.inputs", "a.jsonl", "does not exist"))


@case("judge", "empty dataset")
def _judge_empty(w):
    # judge reads its inputs allowing empty files (sefl_ray/judge/run.py): the error names the systems, not the file
    return Case(_judge(w, w.jsonl("a.jsonl", []), w.outputs("b", ["1"])), ("judge.inputs", "a.jsonl", "holds no rows"))


@case("judge", "corrupt parquet")
def _judge_corrupt(w):
    return Case(_judge(w, w.corrupt_parquet(), w.outputs("b", ["1"])),
                ("judge.inputs", "corrupt.parquet", "not a readable parquet file"))


@case("judge", "csv with bom")
def _judge_bom(w):
    # read right, the one file is one system and judge needs two; read wrong, it lacks the column item_id
    path = w.bom_csv("a.csv", ["item_id", "system", "feedback"], [["1", "a", "Look again."]])
    return Case(_judge(w, path), ("at least two systems (found: a)",))


# ---------------------------------------------------------------- annotate create: annotate.inputs


def _annotate_create(w: Workspace, *paths: str, run_dir: Path | None = None) -> list[str]:
    return ["annotate", "create", w.config({"annotate": {"inputs": list(paths)}}, run_dir=run_dir)]


@case("annotate create", "missing input")
def _annotate_create_missing(w):
    return Case(_annotate_create(w, w.missing("a.jsonl"), w.outputs("b", ["1"])),
                ("annotate.inputs", "a.jsonl", "does not exist"))


@case("annotate create", "empty dataset")
def _annotate_create_empty(w):
    return Case(_annotate_create(w, w.empty_parquet("a.parquet", "item_id", "feedback"), w.outputs("b", ["1"])),
                ("annotate.inputs", "a.parquet", "holds no rows"))


@case("annotate create", "corrupt parquet")
def _annotate_create_corrupt(w):
    return Case(_annotate_create(w, w.corrupt_parquet(), w.outputs("b", ["1"])),
                ("annotate.inputs", "corrupt.parquet", "not a readable parquet file"))


@case("annotate create", "csv with bom")
def _annotate_create_bom(w):
    path = w.bom_csv("a.csv", ["item_id", "system", "feedback"], [["1", "a", "Look again."]])
    return Case(_annotate_create(w, path), ("at least two systems (found: a)",))


@case("annotate create", "run dir not writable")
def _annotate_create_blocked(w):
    return Case(_annotate_create(w, w.outputs("a", ["1"]), w.outputs("b", ["1"]), run_dir=w.blocked()),
                ("cannot create", "Not a directory"))


# ---------------------------------------------------------------- annotate serve / export: the study database


def _study_db(w: Workspace) -> Path:
    return w.run_dir / "annotate" / "study.sqlite"


for _action in ("serve", "export"):
    CASES[f"annotate {_action}", "missing input"] = lambda w, action=_action: Case(
        ["annotate", action, w.config()], ("no study at", "study.sqlite", "annotate create"))
    CASES[f"annotate {_action}", "corrupt database"] = lambda w, action=_action: (
        w.write(_study_db(w), b"not a database at all\n" * 100)
        and Case(["annotate", action, w.config()], ("study.sqlite", "file is not a database")))


@case("annotate serve", "empty dataset")
def _annotate_serve_empty(w):
    w.write(_study_db(w), b"")  # an empty file is an empty SQLite database: no study in it
    return Case(["annotate", "serve", w.config()], ("no study at",), may_rewrite=("run/annotate/study.sqlite",))


@case("annotate export", "run dir not writable")
def _annotate_export_blocked(w):
    from sefl_ray.annotate.study import create_study
    from sefl_ray.config import load_config

    config = w.config({"annotate": {"inputs": [w.outputs("a", ["1", "2"]), w.outputs("b", ["1", "2"])],
                                    "annotators": ["ann1"], "overlap": 1}})
    create_study(load_config(config))
    return Case(["annotate", "export", config, "--out", str(w.blocked())], ("Not a directory",))


# ---------------------------------------------------------------- endpoints: the config is the whole input


@case("endpoints", "empty dataset")
def _endpoints_empty(w):
    return Case(["endpoints", w.config({"endpoints": []})], ("lists no endpoints",))


# ---------------------------------------------------------------- agreement RATINGS... --out OUT


def _agreement(w: Workspace, *paths: str, out: Path | None = None, more=()) -> list[str]:
    return ["agreement", *paths, "--out", str(out or w.root / "agreement-out"), "--bootstrap", "10", *more]


def _ratings(rater: str) -> list[list[str]]:
    return [[f"item{i}", rater, "human", choice] for i, choice in enumerate(["A", "B", "A", "tie", "B", "A"])]


@case("agreement", "missing input")
def _agreement_missing(w):
    return Case(_agreement(w, w.missing("ratings.csv")), ("ratings", "ratings.csv", "does not exist"))


@case("agreement", "malformed file")
def _agreement_malformed(w):
    return Case(_agreement(w, w.text("ratings.jsonl", '{"item_id": "1", "rater": "h1"\n')),
                ("ratings.jsonl", "line 1 is not valid JSON"))


@case("agreement", "not utf-8")
def _agreement_not_utf8(w):
    path = w.text("ratings.csv", "item_id,rater,rater_kind,choice\n1,Jos\xe9,human,A\n".encode("latin-1"))
    return Case(_agreement(w, path), ("ratings.csv", "is not UTF-8 text"))


@case("agreement", "wrong type")
def _agreement_wrong_type(w):
    path = w.jsonl("ratings.jsonl", [{"item_id": "1", "rater": "h1", "rater_kind": "human", "score": "high"}])
    return Case(_agreement(w, path), ("ratings.jsonl row 1", "score 'high'"))


@case("agreement", "bad option")
def _agreement_bad_option(w):
    return Case(_agreement(w, w.missing("ratings.csv"), more=("--bootstrap", "many")),
                ("--bootstrap", "invalid int value", "--help"))


@case("agreement", "empty dataset")
def _agreement_empty(w):
    return Case(_agreement(w, w.text("ratings.csv", "item_id,rater,rater_kind,choice\n")),
                ("ratings.csv", "no ratings"))


@case("agreement", "corrupt parquet")
def _agreement_corrupt(w):
    return Case(_agreement(w, w.corrupt_parquet()), ("ratings", "corrupt.parquet", "not a readable parquet file"))


@case("agreement", "csv with bom")
def _agreement_bom(w):
    def read_both_raters(w):
        report = json.loads((w.root / "agreement-out" / "agreement.json").read_text())
        assert sorted(rater["rater"] for rater in report["raters"]) == ["h1", "h2"], report["raters"]

    return Case(_agreement(w, w.bom_csv("h1.csv", RATING_COLUMNS, _ratings("h1")),
                           w.bom_csv("h2.csv", RATING_COLUMNS, _ratings("h2"))), succeeds=read_both_raters)


@case("agreement", "run dir not writable")
def _agreement_blocked(w):
    return Case(_agreement(w, w.bom_csv("h1.csv", RATING_COLUMNS, _ratings("h1")),
                           w.bom_csv("h2.csv", RATING_COLUMNS, _ratings("h2")), out=w.blocked()),
                ("Not a directory",))


# ---------------------------------------------------------------- annotate import SHEETS... --key KEY --out OUT


def _import(w: Workspace, annotator_sheet: str | bytes, out: Path | None = None) -> list[str]:
    key, sheet = w.sheets(annotator_sheet)
    return ["annotate", "import", sheet, "--key", key, "--out", str(out or w.root / "import-out")]


@case("annotate import", "missing input")
def _import_missing(w):
    key, _ = w.sheets(SHEET_HEADER)
    return Case(["annotate", "import", w.missing("ann2.csv"), "--key", key, "--out", str(w.root / "import-out")],
                ("ann2.csv", "does not exist"))


@case("annotate import", "not utf-8")
def _import_not_utf8(w):
    sheet = (SHEET_HEADER + "q1,Explain,ok,Caf\xe9 feedback,Other,A,\n").encode("latin-1")
    return Case(_import(w, sheet), ("ann1.csv", "not UTF-8 text"))


@case("annotate import", "wrong type")
def _import_wrong_type(w):
    return Case(_import(w, SHEET_HEADER + "q1,Explain,ok,fa,fb,maybe,\n"), ("ann1.csv row 1", "Preferred 'maybe'"))


@case("annotate import", "empty dataset")
def _import_empty(w):
    return Case(_import(w, SHEET_HEADER), ("ann1.csv", "holds no rows"))


@case("annotate import", "csv with bom")
def _import_bom(w):
    def read_both_rows(w):
        rows = [json.loads(line) for line in (w.root / "import-out" / "ratings.jsonl").read_text().splitlines()]
        assert [(row["item_id"], row["choice"]) for row in rows] == [("q1::base::tuned", "A"),
                                                                      ("q2::base::tuned", "tie")]

    sheet = (BOM + SHEET_HEADER + "q1,Explain,ok,fa,fb,A,\nq2,Explain,ok,fa,fb,tie,\n").encode("utf-8")
    return Case(_import(w, sheet), succeeds=read_both_rows)


@case("annotate import", "run dir not writable")
def _import_blocked(w):
    return Case(_import(w, SHEET_HEADER + "q1,Explain,ok,fa,fb,A,\n", out=w.blocked()), ("Not a directory",))


# ---------------------------------------------------------------- report RUN_DIR: the run dir is the input


@case("report", "missing input")
def _report_missing(w):
    return Case(["report", str(w.root / "no-such-run")], ("nothing to report",))


@case("report", "empty dataset")
def _report_empty(w):
    return Case(["report", str(w.inputs)], ("nothing to report",))


@case("report", "malformed file")
def _report_malformed(w):
    w.write(w.run_dir / "manifest.json", '{"stages": {')
    return Case(["report", str(w.run_dir)], ("manifest.json is unreadable", "Expecting"))


@case("report", "wrong type")
def _report_wrong_type(w):
    w.write(w.run_dir / "manifest.json", '{"stages": []}')
    return Case(["report", str(w.run_dir)], ("manifest.json is unreadable", "'stages' is not a mapping"))


@case("report", "corrupt parquet")
def _report_corrupt(w):
    w.corrupt_parquet(w.run_dir / "infer" / "base" / "outputs.parquet")
    return Case(["report", str(w.run_dir)], ("outputs.parquet is unreadable", "Parquet magic bytes"))


@case("report", "run dir not writable")
def _report_blocked(w):
    report_dir = w.run_dir / "report"
    (report_dir / "report.html").unlink()
    report_dir.rmdir()
    w.write(report_dir, "a file where the report folder goes\n")
    return Case(["report", str(w.run_dir)], ("cannot write the report in", "File exists"))


# ---------------------------------------------------------------- merge RUN: a run dir or a checkpoint folder


@case("merge", "missing input")
def _merge_missing(w):
    return Case(["merge", str(w.root / "no-such-run")], ("neither a run dir", "nor a checkpoint folder"))


@case("merge", "malformed file")
def _merge_malformed(w):
    w.write(w.run_dir / "train" / "summary.json", '{"checkpoint": ')
    return Case(["merge", str(w.run_dir)], ("summary.json",))


@case("merge", "wrong type")
def _merge_wrong_type(w):
    w.write(w.run_dir / "train" / "summary.json", '{"checkpoint": 5}')
    return Case(["merge", str(w.run_dir)], ("summary.json",))


# ---------------------------------------------------------------- push FOLDER (dry runs: nothing is contacted)


@case("push", "missing input")
def _push_missing(w):
    return Case(["push", w.missing("export"), "--repo", "me/x", "--dry-run"], ("nothing to push", "is not a folder"))


@case("push", "empty dataset")
def _push_empty(w):
    (w.inputs / "empty").mkdir()
    return Case(["push", str(w.inputs / "empty"), "--repo", "me/x", "--dry-run"], ("holds no files",))


@case("push", "wrong type")
def _push_wrong_type(w):
    return Case(["push", str(w.run_dir / "export"), "--repo", "me/x", "--repo-type", "space", "--dry-run"],
                ("--repo-type", "invalid choice: 'space'", "--help"))


# ---------------------------------------------------------------- models prepare NAME


@case("models prepare", "unknown key")
def _models_unknown(w):
    return Case(["models", "prepare", "gpt-9"], ("unknown embedded model 'gpt-9'",))


@case("models prepare", "missing input")
def _models_missing(w):
    import sefl_ray.models

    without_package = sefl_ray.models.EmbeddedModel(package="sefl_ray_no_such_package", gguf_filename="x.gguf",
                                                    pip_name="sefl-ray-no-such-package")
    w.monkeypatch.setitem(sefl_ray.models.EMBEDDED_MODELS, "smollm2-135m", without_package)
    return Case(["models", "prepare", "smollm2-135m"], ("sefl-ray-no-such-package",))


@case("models prepare", "run dir not writable")
def _models_blocked(w):
    w.monkeypatch.setenv("SEFL_RAY_CACHE", str(w.blocked()))
    return Case(["models", "prepare", "smollm2-135m"], ("Not a directory",))


# ---------------------------------------------------------------- the tests


@pytest.fixture
def no_ray_no_model(monkeypatch):
    """Ray may not start, no embedded model be converted and no app served before a bad input is caught."""
    import ray
    import uvicorn

    import sefl_ray.models

    def refuse(what):
        def refused(*args, **kwargs):
            raise AssertionError(f"{what} before the bad input was caught")
        return refused

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse("Ray started"))
    monkeypatch.setattr(sefl_ray.models, "_convert_gguf", refuse("an embedded model was converted"))
    monkeypatch.setattr(uvicorn, "run", refuse("the annotate app was served"))


def _params():
    for (command, kind), build in CASES.items():
        reason = KNOWN_FAILURES.get((command, kind))
        yield pytest.param(command, build, id=f"{command.replace(' ', '-')}--{kind.replace(' ', '-')}",
                           marks=[pytest.mark.xfail(strict=True, reason=reason)] if reason else [])


@pytest.mark.parametrize(("command", "build"), list(_params()))
def test_bad_input(command, build, tmp_path, capfd, request, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workspace = Workspace(tmp_path, request, monkeypatch)
    bad = build(workspace)
    request.getfixturevalue("ray_session" if bad.needs_ray else "no_ray_no_model")
    excused = bad.may_rewrite
    before = snapshot(tmp_path)
    outcome = run_main(bad.argv, capfd)
    if bad.succeeds is not None:
        assert outcome.code == 0 and not outcome.err.strip(), outcome.err
        bad.succeeds(workspace)
    else:
        assert_one_line_error(outcome, bad.argv[0], bad.fragments)
    assert_nothing_lost(before, tmp_path, excused)


@pytest.mark.parametrize("stage", ["synth", "train"])
def test_a_stage_with_a_missing_input_keeps_the_config_yaml_of_its_last_run(stage, tmp_path, capfd, request,
                                                                            monkeypatch, no_ray_no_model):
    workspace = Workspace(tmp_path, request, monkeypatch)
    missing = workspace.missing("data.jsonl")
    config = workspace.config(_sources(missing) if stage == "synth" else {"train": {"dataset": missing}})
    saved = workspace.run_dir / stage / "config.yaml"
    before = saved.read_bytes()
    assert_one_line_error(run_main([stage, config], capfd), stage, ("data.jsonl", "does not exist"))
    assert saved.read_bytes() == before


# ---------------------------------------------------------------- the real console script, a few times


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SEFL_RAY, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_the_console_script_prints_the_same_one_line(tmp_path):
    """A corrupt parquet input and an argparse mistake: nothing is logged before either, so stderr is one line."""
    workspace_inputs = tmp_path / "inputs"
    workspace_inputs.mkdir()
    corrupt = workspace_inputs / "ratings.parquet"
    pq.write_table(pa.Table.from_pylist([{"item_id": str(i), "rater": "h1"} for i in range(50)]), corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    for args, fragment in (
        (["agreement", str(corrupt), "--out", str(tmp_path / "out")], "ratings.parquet is not a readable parquet"),
        (["push", str(tmp_path), "--repo", "me/x", "--repo-type", "space"], "invalid choice: 'space'"),
    ):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"sefl-ray {args[0]}: error: ") and fragment in lines[0], \
            result.stderr
    assert not (tmp_path / "out").exists()


def test_the_console_script_ends_with_the_error_after_its_log_lines(tmp_path):
    """synth logs its resolved config (INFO, many lines) before it reads the sources: the error is the last line,
    the only one of its kind, and there is no traceback."""
    sources = tmp_path / "passages.csv"
    sources.write_bytes((BOM + "text,id\ntoo short,1\n").encode("utf-8"))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "synth": {"sources": {"path": str(sources)}},
        "endpoints": [{"name": "local", "model": "m", "base_url": "http://127.0.0.1:9/v1"}]}))
    result = run_cli("synth", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("sefl-ray synth: error: ")]
    assert errors == [lines[-1]] and "no passages in" in lines[-1], result.stderr
