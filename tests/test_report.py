"""The run report on a real run: one pipeline run on the test kit (loopback teacher, student and judge, the tiny
model as the base), shared by every test here, with a `<script>` planted in one tuned feedback. Then the page is
checked as text (every part, every example, escaped model text, nothing outside the run dir) and in a real
headless Chromium (no console errors, every image decoded, the script shown as text and never run).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sefl_ray.config import load_config
from sefl_ray.errors import InputNotFoundError
from sefl_ray.pipeline import run_pipeline
from sefl_ray.report.run import run_report
from sefl_ray.testing.browser import chromium_or_skip
from sefl_ray.testing.loopback import LoopbackServer
from sefl_ray.testing.schema_replies import grounded_schema_reply

pytestmark = pytest.mark.slow  # one pipeline run for the module (about a minute on 2 cores)

PART_IDS = ["run", "data", "quality", "training", "inference", "judges", "calibration", "examples"]
INJECTED = "<script>window.__pwned=1</script>"


@pytest.fixture(scope="module")
def run_dir(ray_session, tmp_path_factory, tiny_model_dir) -> Path:
    """A pipeline run with six held-out items, one tuned feedback carrying a script, and its report rebuilt."""
    run_dir = tmp_path_factory.mktemp("report") / "run"
    with LoopbackServer(replies=grounded_schema_reply) as server:
        run_pipeline(load_config(None, [
            f"run_dir={run_dir}", f"endpoints=[{{name: loop, model: loop-model, base_url: '{server.base_url}'}}]",
            "serve.enabled=false", "models.prepare=[]", "retry.base_delay_s=0.01",
            "synth.teacher_endpoint=loop", "synth.student_endpoint=loop", "synth.num_conversations=12",
            "synth.num_actors=1", "gate.endpoint=loop", "export.valid_fraction=0.5",
            "export.include_filtered=true",  # the scripted replies quote prompts: six held-out items whatever gates say
            f"train.model={tiny_model_dir}",
            "train.num_workers=1", "train.max_steps=2", "train.max_seq_len=1024", "train.checkpoint_every_steps=100",
            "infer.max_new_tokens=8", "infer.batch_size=8", "judge.judges=[loop]", "judge.n_bootstrap=20",
        ]))
    tuned = run_dir / "infer" / "tuned" / "outputs.parquet"
    rows = pq.read_table(tuned).to_pylist()
    first = min(row["item_id"] for row in rows)
    for row in rows:
        if row["item_id"] == first:
            row["feedback"] = f"Well done. {INJECTED} Check step 2."
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(tuned)), tuned)
    run_report(run_dir)
    return run_dir


def test_report_shows_every_part_of_a_pipeline_run_and_escapes_model_text(run_dir):
    page = (run_dir / "report" / "report.html").read_text()
    assert re.findall(r'<section id="(\w+)">', page) == PART_IDS
    parts = dict(zip(PART_IDS, re.split(r'<section id="\w+">', page)[1:]))
    assert not any("has not run here" in body for body in parts.values())
    assert "<td>synth</td>" in parts["run"] and 'href="../manifest.json"' in page
    assert "<td>reasoning</td>" in parts["data"] or "<td>factual</td>" in parts["data"]
    assert "first eval loss" in parts["training"] and "tuned" in parts["inference"]
    assert "Win rates" in parts["judges"] and "Position bias" in parts["judges"] and "Rubric" in parts["judges"]
    assert "No human ratings" in parts["calibration"]
    assert parts["training"].count("<img") == 1 and page.count('src="data:image/png;base64,') >= 6

    examples = re.findall(r'<article class="example" id="example-\d+">(.*?)</article>', parts["examples"], re.S)
    assert len(examples) == 6
    for example in examples:
        for label in ("Assignment", "Student answer", "base feedback", "tuned feedback", "verdict after both orders",
                      "rationale (first order)", "rubric scores"):
            assert label in example, label
        assert example.count("You wrote") >= 2  # the loopback judge's rationale quotes its prompt
    # The planted script is text in the page, never markup; no other script, nothing loaded from outside.
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in examples[0]
    assert "<script" not in page and not re.search(r"""\bsrc=(?!["']?data:)""", page)
    assert not re.search(r"""\bhref=(?!["']?\.\./)""", page)
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "## Examples" in markdown and "&lt;script&gt;" in markdown and "<script" not in markdown


def test_a_partial_run_keeps_every_heading_and_an_empty_dir_is_a_one_line_error(run_dir, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(run_dir / "synth", partial / "synth", ignore=shutil.ignore_patterns("call_cache"))
    for path in (partial / "synth" / "records").rglob("*.parquet"):  # as if the embedded model had been the teacher
        table = pq.read_table(path)
        models = pa.array(["embedded:smollm2-135m"] * len(table), type=pa.string())
        pq.write_table(table.set_column(table.schema.get_field_index("teacher_model"), "teacher_model", models), path)
    page = run_report(partial).read_text()
    assert re.findall(r'<section id="(\w+)">', page) == PART_IDS
    for stage, part in (("train", "training"), ("infer", "inference"), ("judge", "judges"), ("infer", "examples")):
        body = page.split(f'<section id="{part}">')[1].split("</section>")[0]
        assert f"The {stage} stage has not run here" in body, part
    assert "No manifest.json here" in page
    assert "The teacher is <code>embedded:smollm2-135m</code>: a 135M model makes this a smoke test" in page

    from sefl_ray.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputNotFoundError, match="nothing to report"):
        run_report(empty)
    assert main(["report", str(empty)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("sefl-ray report: error: nothing to report") and "\n" not in error


def test_a_missing_browser_skips_loudly_but_fails_under_ci(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.warns(UserWarning, match="BROWSER TEST SKIPPED .the report.: no `chromium`"), \
            pytest.raises(pytest.skip.Exception):
        chromium_or_skip("the report")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI: the browser test of the report cannot run"):
        chromium_or_skip("the report")


def test_report_opens_in_headless_chromium_without_errors_and_shows_a_planted_script_as_text(run_dir):
    chromium = chromium_or_skip("the report")
    from playwright.sync_api import sync_playwright

    report = run_dir / "report" / "report.html"
    screenshot = run_dir / "report" / "screenshot.png"
    errors, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri(), wait_until="load")
            images = page.evaluate("() => Array.from(document.images, image => ({alt: image.alt, complete: "
                                   "image.complete, width: image.naturalWidth, height: image.naturalHeight}))")
            ids = page.evaluate("() => Array.from(document.querySelectorAll('section[id]'), s => s.id)")
            pwned = page.evaluate("() => typeof window.__pwned")
            planted = page.locator("#examples .feedback", has_text=INJECTED)
            planted_count, planted_visible = planted.count(), planted.first.is_visible()
            example_count = page.locator("#examples article.example").count()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert len(images) >= 6 and all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in images), images
    assert ids == PART_IDS
    assert pwned == "undefined" and planted_count == 1 and planted_visible
    assert example_count == 6
    assert [url for url in requests if url != report.as_uri() and not url.startswith("data:")] == []
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
