"""Server-rendered pages of the study: every model and user text goes through `html.escape`, the page's state
travels as a JSON data block (with `<`, `>` and `&` escaped), and the only script is the static `annotate.js`
(the Content-Security-Policy forbids inline scripts, so a planted `<script>` could not run even unescaped).
No external assets: the app works offline. Annotator pages name positions (A, B), never systems."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from sefl_ray.annotate.questions import KEYS, VALUES

_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "yes": "Yes", "no": "No"}


def item_page(*, base: str, slot_id: str, position: int, total: int, complete_others: int, item: Any,
              questions: list[dict[str, Any]], answers: dict[str, dict[str, Any]], auto_advance: bool) -> str:
    """One item of an annotator's queue. `item` holds the texts, with feedback already put in shown order."""
    state = {"api": f"{base}/api", "slot": slot_id, "position": position, "total": total,
             "completeOthers": complete_others, "answers": answers, "autoAdvance": auto_advance,
             "required": [q["name"] for q in questions if q["required"]],
             "next": f"{base}/{position + 1}" if position < total else f"{base}/done",
             "prev": f"{base}/{position - 1}" if position > 1 else None}
    passage = (f'<details class="passage"><summary>Source passage</summary><div class="text">'
               f'{escape(item["passage"])}</div></details>') if item["passage"] else ""
    submission = (f'<h2>Student answer</h2><div class="text" id="submission">{escape(item["submission"])}</div>'
                  if item["submission"] else "")
    prev = (f'<a class="nav" id="prev" href="{escape(state["prev"])}">&larr; Previous</a>' if state["prev"]
            else '<span class="nav disabled">&larr; Previous</span>')
    fieldsets = "\n".join(_question(number, question, answers.get(question["name"]))
                          for number, question in enumerate(questions, 1))
    body = f"""
<header>
  <div class="where">Item <b id="position">{position}</b> of <b>{total}</b>
    &middot; <span id="complete-count">{complete_others}</span> complete</div>
  <progress id="progress" max="{total}" value="{complete_others}"></progress>
  <nav>{prev} <a class="nav" id="next" href="{escape(state["next"])}">Next &rarr;</a>
    <a class="nav" href="{escape(base)}/done">All items</a></nav>
  <span id="status" role="status" aria-live="polite"></span>
</header>
<main>
  <section class="context">
    <h2>Assignment</h2><div class="text" id="assignment">{escape(item["assignment"])}</div>
    {submission}
    {passage}
  </section>
  <section class="pair">
    <article class="feedback" id="feedback-a"><h2>Feedback A</h2>
      <div class="text">{escape(item["feedback_a"])}</div></article>
    <article class="feedback" id="feedback-b"><h2>Feedback B</h2>
      <div class="text">{escape(item["feedback_b"])}</div></article>
  </section>
  <form id="questions" action="#" autocomplete="off">
{fieldsets}
  </form>
  <p class="help">Keys: <kbd>a</kbd> A better, <kbd>b</kbd> B better, <kbd>t</kbd> tie,
    <kbd>y</kbd>/<kbd>n</kbd> yes/no, <kbd>1</kbd>&ndash;<kbd>5</kbd> scores;
    <kbd>&uarr;</kbd>/<kbd>&darr;</kbd> question, <kbd>&larr;</kbd>/<kbd>&rarr;</kbd> item,
    <kbd>c</kbd> comment (<kbd>Esc</kbd> leaves it). Every answer is saved as you give it.</p>
</main>"""
    return _page(f"Item {position} of {total}", body, state)


def done_page(*, base: str, total: int, rows: list[tuple[int, bool]]) -> str:
    complete = sum(done for _, done in rows)
    links = "".join(f'<li><a class="{"done" if done else "todo"}" href="{escape(base)}/{position}">{position}'
                    f'{" ✓" if done else ""}</a></li>' for position, done in rows)
    heading = "All items done. Thank you!" if complete == total else f"{complete} of {total} items complete"
    body = f"""<main class="narrow"><h1>{heading}</h1>
<p>Open any item to look at or revise your answers.</p><ol class="items">{links}</ol></main>"""
    return _page(heading, body, None)


def message_page(title: str, message: str) -> str:
    return _page(title, f'<main class="narrow"><h1>{escape(title)}</h1><p>{escape(message)}</p></main>', None)


def admin_page(*, progress: list[dict[str, Any]], agreement: dict[str, Any] | None, reason: str | None,
               links: dict[str, str]) -> str:
    rows = "".join(
        f"<tr><td>{escape(p['annotator'])}</td><td>{p['complete']} / {p['slots']}</td><td>{p['answers']}</td>"
        f"<td>{_num(p['self_consistency'])} ({p['repeat_pairs']})</td><td>{_num(p['gold_accuracy'])} "
        f"({p['gold_answers']})</td><td>{escape(p['last_answer_at'] or '')}</td></tr>" for p in progress)
    parts = [f"""<h1>Study progress</h1>
<table><thead><tr><th>annotator</th><th>items complete</th><th>answers</th><th>self-consistency (pairs)</th>
<th>gold accuracy (answers)</th><th>last answer (UTC)</th></tr></thead><tbody>{rows}</tbody></table>"""]
    if agreement is None:
        parts.append(f"<h2>Agreement</h2><p>{escape(reason or 'no ratings yet')}</p>")
    else:
        parts.append(_agreement_tables(agreement))
    parts.append(f'<p>Raw numbers: <a href="{escape(links["progress"])}">progress.json</a>, '
                 f'<a href="{escape(links["agreement"])}">agreement.json</a> (the report of '
                 f'<code>sefl-ray agreement</code>, computed live on the answers so far).</p>')
    return _page("Study admin", '<main class="wide">' + "\n".join(parts) + "</main>", None)


def _agreement_tables(report: dict[str, Any]) -> str:
    parts = ["<h2>Agreement (live, the same code as <code>sefl-ray agreement</code>)</h2>"]
    for dimension, block in report["dimensions"].items():
        fleiss, alpha = block["fleiss_kappa"], block["krippendorff_alpha"]
        pairs = "".join(f"<tr><td>{escape(p['rater_a'])} ({p['kind_a']})</td><td>{escape(p['rater_b'])} "
                        f"({p['kind_b']})</td><td>{p['n']}</td><td>{_num(p['cohen_kappa'])}</td>"
                        f"<td>{_num(p['percent_agreement'])}</td></tr>" for p in block["pairwise"])
        judges = "".join(f"<tr><td>{escape(j['rater'])}</td><td>{j['n']}</td><td>{_num(j['cohen_kappa'])} "
                         f"[{_num(j['ci_low'])}, {_num(j['ci_high'])}]</td><td>{_num(j['accuracy'])}</td></tr>"
                         for j in block["vs_human_majority"]["raters"])
        parts.append(f"""<h3>{escape(dimension)}</h3>
<p>{block['n_items']} items. Humans: Fleiss' &kappa; {_num(fleiss['value'])} (n={fleiss['n']}{_why(fleiss)}),
Krippendorff's &alpha; {_num(alpha['value'])}{_why(alpha)}.</p>
<table><thead><tr><th>rater</th><th>rater</th><th>n</th><th>Cohen's &kappa;</th><th>agreement</th></tr></thead>
<tbody>{pairs}</tbody></table>
<table><thead><tr><th>judge</th><th>items with a human majority</th><th>&kappa; vs human majority [95 % CI]</th>
<th>accuracy</th></tr></thead><tbody>{judges or '<tr><td colspan="4">no judge ratings</td></tr>'}</tbody></table>""")
    return "\n".join(parts)


def _question(number: int, question: dict[str, Any], answer: dict[str, Any] | None) -> str:
    name, kind = question["name"], question["kind"]
    legend = f'<legend><span class="number">{number}.</span> {escape(question["prompt"])}</legend>'
    attributes = (f'class="question{" answered" if answer and answer["value"] else ""}" data-question="{name}" '
                  f'data-kind="{kind}" data-required="{int(question["required"])}"')
    if kind == "text":
        value = escape(answer["value"]) if answer else ""
        return (f'<fieldset {attributes}>{legend}<textarea id="comment" name="{name}" rows="3" maxlength="5000" '
                f'placeholder="Press c to write, Esc to leave">{value}</textarea></fieldset>')
    buttons = "".join(
        f'<button type="button" data-value="{value}" data-key="{KEYS[value]}" '
        f'aria-pressed="{"true" if answer and answer["value"] == value else "false"}">'
        f'<kbd>{KEYS[value]}</kbd> {_LABELS.get(value, value)}</button>' for value in VALUES[kind])
    return f'<fieldset {attributes}>{legend}<div class="options">{buttons}</div></fieldset>'


def _page(title: str, body: str, state: dict[str, Any] | None) -> str:
    data = ""
    if state is not None:
        payload = json.dumps(state).replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
        data = (f'<script type="application/json" id="state">{payload}</script>\n'
                '<script src="/static/annotate.js"></script>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><link rel="stylesheet" href="/static/annotate.css"></head>
<body>{body}
{data}
</body></html>"""


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _why(estimate: dict[str, Any]) -> str:
    return f"; {escape(estimate['reason'])}" if estimate.get("reason") else ""


CSS = """
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232a;
       background: #f5f6f8; }
header { position: sticky; top: 0; z-index: 2; display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: center;
         padding: .5rem 1rem; background: #fff; border-bottom: 1px solid #d8dde3; }
header progress { flex: 1 1 8rem; height: .6rem; }
nav { display: flex; gap: .5rem; }
.nav { display: inline-block; padding: .45rem .8rem; min-height: 44px; line-height: 1.9; border-radius: 6px;
       background: #e9edf2; color: #1d232a; text-decoration: none; }
.nav.disabled { opacity: .45; }
#status { min-width: 6rem; font-size: .9rem; color: #2d6a3e; }
#status[data-kind="error"] { color: #b3261e; font-weight: 600; }
main { padding: 1rem; max-width: 1400px; margin: 0 auto; }
main.narrow { max-width: 50rem; } main.wide { max-width: 1400px; }
h1 { font-size: 1.4rem; } h2 { font-size: 1rem; margin: .8rem 0 .3rem; color: #4a5561; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; background: #fff; border: 1px solid #d8dde3;
        border-radius: 6px; padding: .6rem .8rem; }
.passage summary { cursor: pointer; min-height: 44px; line-height: 44px; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; margin: 1rem 0; }
.feedback .text { border-width: 2px; }
#feedback-a .text { border-color: #6b8fd6; } #feedback-b .text { border-color: #d39b4a; }
fieldset.question { border: 1px solid #d8dde3; border-radius: 8px; background: #fff; margin: 0 0 .6rem;
                    padding: .5rem .8rem .7rem; }
fieldset.question.current { outline: 3px solid #6b8fd6; }
fieldset.question.answered legend::after { content: " ✓"; color: #2d6a3e; }
legend { font-weight: 600; padding: 0 .3rem; }
.options { display: flex; flex-wrap: wrap; gap: .5rem; }
.options button { min-height: 44px; min-width: 7rem; padding: .4rem .9rem; font: inherit; border-radius: 6px;
                  border: 1px solid #9aa5b1; background: #fff; cursor: pointer; touch-action: manipulation; }
.options button[aria-pressed="true"] { background: #1f5fbf; border-color: #1f5fbf; color: #fff; }
kbd { font: .8rem ui-monospace, monospace; border: 1px solid #b9c1ca; border-radius: 4px; padding: 0 .3rem;
      background: #f5f6f8; color: #1d232a; }
textarea { width: 100%; font: inherit; padding: .5rem; border-radius: 6px; border: 1px solid #9aa5b1; }
.help { color: #4a5561; font-size: .9rem; }
ol.items { display: flex; flex-wrap: wrap; gap: .4rem; padding: 0; list-style: none; }
ol.items a { display: inline-block; min-width: 3.2rem; min-height: 44px; line-height: 44px; text-align: center;
             border-radius: 6px; background: #e9edf2; color: #1d232a; text-decoration: none; }
ol.items a.done { background: #d6ecd9; }
table { border-collapse: collapse; margin: .5rem 0 1rem; background: #fff; }
th, td { border: 1px solid #d8dde3; padding: .3rem .6rem; text-align: left; }
@media (max-width: 700px) { .pair { grid-template-columns: 1fr; } .options button { flex: 1 1 40%; } }
"""

JS = r"""
(function () {
  "use strict";
  var state = JSON.parse(document.getElementById("state").textContent);
  var status = document.getElementById("status");
  var fieldsets = Array.prototype.slice.call(document.querySelectorAll("fieldset.question"));
  var keyed = fieldsets.filter(function (f) { return f.dataset.kind !== "text"; });
  var comment = document.getElementById("comment");
  var chains = {}, shown = {}, failed = false, current = -1, leaving = false;
  Object.keys(state.answers).forEach(function (name) { shown[name] = state.answers[name].value; });

  function say(text, kind) { status.textContent = text; status.dataset.kind = kind || ""; }
  function field(name) { return fieldsets.filter(function (f) { return f.dataset.question === name; })[0]; }
  function answered(name) { return shown[name] !== undefined && shown[name] !== ""; }
  function complete() { return state.required.every(answered); }

  function render(name) {
    var f = field(name);
    f.classList.toggle("answered", answered(name));
    if (f.dataset.kind === "text") {
      if (document.activeElement !== comment) comment.value = shown[name] || "";
      return;
    }
    f.querySelectorAll("button[data-value]").forEach(function (b) {
      b.setAttribute("aria-pressed", String(shown[name] === b.dataset.value));
    });
  }

  function renderProgress() {
    var done = state.completeOthers + (complete() ? 1 : 0);
    document.getElementById("complete-count").textContent = done;
    document.getElementById("progress").value = done;
  }

  function post(name, value) {
    var saved = state.answers[name];
    var body = {slot: state.slot, question: name, value: value, revision: saved ? saved.revision : 0};
    return fetch(state.api + "/answer", {method: "POST", keepalive: true, credentials: "same-origin",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)})
      .then(function (response) {
        return response.json().then(function (data) {
          if (response.ok) { state.answers[name] = {value: value, revision: data.revision}; say("Saved ✓"); return; }
          failed = true;
          if (response.status === 409 && data.current) {
            if (data.current.revision) { state.answers[name] = data.current; shown[name] = data.current.value; }
            else { delete state.answers[name]; delete shown[name]; }
            render(name); renderProgress();
          }
          say("Not saved: " + data.detail, "error");
        });
      }, function () {
        failed = true;
        say("Not saved: no connection to the server. Answer again when it is back.", "error");
      });
  }

  function save(name, value) {
    say("Saving…");
    chains[name] = (chains[name] || Promise.resolve()).then(function () { return post(name, value); });
    return chains[name];
  }

  function settled() {
    return Promise.all(Object.keys(chains).map(function (name) { return chains[name]; }));
  }

  function go(url) {
    if (!url || leaving) return;
    leaving = true;
    flushComment();
    settled().then(function () { if (failed) { leaving = false; return; } window.location.href = url; });
  }

  function focusQuestion(index) {
    if (!keyed.length) return;
    current = Math.max(0, Math.min(keyed.length - 1, index));
    keyed.forEach(function (f, i) { f.classList.toggle("current", i === current); });
    keyed[current].scrollIntoView({block: "nearest"});
  }

  function nextOpen(from) {
    for (var i = from; i < keyed.length; i++) {
      if (keyed[i].dataset.required === "1" && !answered(keyed[i].dataset.question)) return i;
    }
    for (var j = 0; j < from; j++) {
      if (keyed[j].dataset.required === "1" && !answered(keyed[j].dataset.question)) return j;
    }
    return -1;
  }

  function answer(f, value, byKeyboard) {
    var name = f.dataset.question;
    failed = false;
    shown[name] = value; render(name); renderProgress();
    save(name, value);
    var index = keyed.indexOf(f);
    var open = nextOpen(index + 1);
    if (open >= 0) { focusQuestion(open); return; }
    focusQuestion(index);
    if (byKeyboard && state.autoAdvance && complete()) { go(state.next); }
  }

  var lastComment = comment ? comment.value : null, timer = null;
  function flushComment() {
    if (!comment) return;
    clearTimeout(timer);
    if (comment.value === lastComment) return;
    lastComment = comment.value; shown[comment.name] = comment.value;
    render(comment.name); renderProgress(); save(comment.name, comment.value);
  }
  if (comment) {
    comment.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(flushComment, 600); });
    comment.addEventListener("blur", flushComment);
  }
  window.addEventListener("pagehide", flushComment);

  keyed.forEach(function (f) {
    f.querySelectorAll("button[data-value]").forEach(function (b) {
      b.addEventListener("click", function () { answer(f, b.dataset.value, false); });
    });
  });
  document.getElementById("questions").addEventListener("submit", function (e) { e.preventDefault(); });
  ["next", "prev"].forEach(function (id) {
    var link = document.getElementById(id);
    if (link) link.addEventListener("click", function (e) { e.preventDefault(); go(link.href); });
  });

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var tag = e.target.tagName;
    if (tag === "TEXTAREA" || tag === "INPUT") { if (e.key === "Escape") e.target.blur(); return; }
    var key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (key === "ArrowRight") { e.preventDefault(); go(state.next); }
    else if (key === "ArrowLeft") { e.preventDefault(); go(state.prev); }
    else if (key === "ArrowDown" || key === "j") { e.preventDefault(); focusQuestion(current + 1); }
    else if (key === "ArrowUp" || key === "k") { e.preventDefault(); focusQuestion(current - 1); }
    else if (key === "c" && comment) { e.preventDefault(); comment.focus(); }
    else if (current >= 0) {
      var button = keyed[current].querySelector('button[data-key="' + key + '"]');
      if (button) { e.preventDefault(); answer(keyed[current], button.dataset.value, true); }
    }
  });

  var open = nextOpen(0);
  focusQuestion(open >= 0 ? open : 0);
  renderProgress();
})();
"""
