"""The stage registry is the one place a stage is declared: a toy stage added there alone gets a command, a place in
the pipeline, a manifest record with its numbers, and a part of the report. And the package's import graph stays a
tree: no cycle, and the config imports no stage."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from sefl_ray.cli import build_parser, main
from sefl_ray.config import load_config
from sefl_ray.layout import RunLayout
from sefl_ray.manifest import read_manifest
from sefl_ray.pipeline import run_pipeline
from sefl_ray.report.run import run_report
from sefl_ray.report.sections import section
from sefl_ray.stages import STAGES, ReportPart, Stage, stage_fingerprints

PACKAGE = Path(__file__).resolve().parents[1] / "sefl_ray"
WORDS = "the teacher names each mistake and how to fix it"


def run_wordcount(config) -> Path:
    """The toy stage: counts words, writes its summary in its own folder of the run dir."""
    out = RunLayout(config.run_dir).stage_dir("wordcount")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"rows": 1, "words": len(WORDS.split()), "seed": config.seed}))
    return out / "summary.json"


def wordcount_numbers(layout: RunLayout) -> dict:
    return json.loads((layout.stage_dir("wordcount") / "summary.json").read_text())


def wordcount_sections(run_dir: Path) -> list[dict]:
    words = wordcount_numbers(RunLayout(run_dir))["words"]
    return [section("Words counted", f"The toy stage counted {words} words.")]


TOY = Stage("wordcount", "count the words of a sentence (a toy stage)", "test_stages:run_wordcount",
            numbers="test_stages:wordcount_numbers",
            report=(ReportPart("wordcount", "Word count", "test_stages:wordcount_sections"),))


@pytest.fixture
def toy_stage():
    STAGES.insert(len(STAGES) - 1, TOY)  # before report, as a new stage would be
    try:
        yield TOY
    finally:
        STAGES.remove(TOY)


def test_a_stage_added_to_the_registry_alone_is_in_the_cli_pipeline_manifest_and_report(toy_stage, tmp_path,
                                                                                          capsys, caplog):
    help_text = build_parser().format_help()
    assert "wordcount" in help_text and "count the words of a sentence" in help_text

    config_path = tmp_path / "config.yaml"
    config_path.write_text(f"run_dir: {tmp_path / 'run'}\nmodels: {{prepare: []}}\n")
    assert main(["wordcount", str(config_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "run" / "wordcount" / "summary.json")

    config = load_config(config_path)
    fingerprints = stage_fingerprints(config)
    assert fingerprints["wordcount"] != stage_fingerprints(load_config(config_path, ["seed=1"]))["wordcount"]
    with caplog.at_level("INFO"):
        run_pipeline(config, only="wordcount")
    assert "stage wordcount runs (forced)" in caplog.text
    record = read_manifest(config.run_dir)["stages"]["wordcount"]
    assert record["status"] == "done" and record["fingerprint"] == fingerprints["wordcount"]
    assert record["words"] == 10 and record["artifacts"] == ["wordcount/summary.json"]
    with caplog.at_level("INFO"):
        run_pipeline(config, start="wordcount")  # report runs after it, as the registry orders them
    assert list(read_manifest(config.run_dir)["stages"]) == ["wordcount", "report"]

    html = run_report(config.run_dir).read_text()
    assert 'id="wordcount"' in html and "The toy stage counted 10 words." in html
    assert "<td>wordcount</td>" in html  # the run part's stage table, from the manifest
    assert html.index('id="run"') < html.index('id="wordcount"') < html.index('id="examples"')


def _imports(path: Path) -> set[str]:
    """Every sefl_ray module `path` imports, at the top or inside a function (a lazy import is still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sefl_ray"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("sefl_ray"))
    return found


def _top_package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_the_import_graph_has_no_cycle_and_the_config_imports_no_stage():
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        owner = _top_package(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        graph.setdefault(owner, set()).update(
            dep for dep in map(_top_package, _imports(path)) if dep != owner)
    assert graph["config"] <= {"errors", "layout", "durable"}, graph["config"]
    assert graph["layout"] == set()
    assert graph["durable"] == set()

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        for dep in sorted(graph.get(node, ())):
            if dep in path:
                return [*path[path.index(dep):], dep]
            if (found := cycle_from(dep, [*path, dep])) is not None:
                return found
        return None

    for package in graph:
        assert cycle_from(package, [package]) is None, " -> ".join(cycle_from(package, [package]))
