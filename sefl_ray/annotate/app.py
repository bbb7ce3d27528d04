"""The rating web app: FastAPI, served by uvicorn in one process (`server.py`).

Why uvicorn + FastAPI and not Ray Serve: a study is a teacher's laptop and a few hundred answers, and SQLite wants
one process to write it. Serve would need a Ray cluster to rate 150 items and would spread the writers over replica
processes (each its own connection and lock), for load a single process handles with room to spare
(bench/annotate_load.py). FastAPI and uvicorn come with `ray[serve]`, so nothing new is installed; the same app
could be mounted as a Serve ingress (`@serve.ingress(build_app(...))`) if a study ever outgrows one process.

Routes (tokens in the path; every response `Cache-Control: no-store`, `Referrer-Policy: no-referrer` and a CSP
allowing only this origin's own script and style):

    GET  /a/{token}/                 -> the first item not yet complete (or the list, when all are)
    GET  /a/{token}/{position}       item `position` of N of this annotator's queue
    GET  /a/{token}/done             every item of the queue, complete or not, as links
    GET  /a/{token}/api/slot/{slot}  the slot's position and this annotator's current answers (JSON)
    POST /a/{token}/api/answer       {"slot", "question", "value", "revision"}: save one answer
    GET  /admin/{token}/             progress, self-consistency, gold accuracy and live agreement
    GET  /admin/{token}/progress.json, /admin/{token}/agreement.json
    GET  /static/annotate.js, /static/annotate.css

Blindness: nothing an annotator receives names a system. Pages and the API speak of positions (A, B) and of
slots (random ids, one per queue entry); item ids, which carry system names, stay on the server, and so does the
A/B key of every slot. An annotator token opens only its own slots: another annotator's slot is 403, an unknown
one 404, and admin routes take only the admin token (403 otherwise). Tokens are compared as sha256 hashes with
`hmac.compare_digest`.

Saving: each answer carries the revision the client last saw (0 for a first answer). The server stores it as the
next revision only if that is still the current one; a replayed or out-of-date save gets 409 with the stored
answer, and nothing is written. A malformed body is 400, a value the question does not take or an unknown
question 422, an unknown slot 404, a body over 64 KiB 413: each with a one-line `detail`.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from sefl_ray.annotate import pages
from sefl_ray.annotate.export import shown_feedback
from sefl_ray.annotate.quality import live_agreement, progress
from sefl_ray.annotate.questions import check_value
from sefl_ray.annotate.store import StaleRevision, Store
from sefl_ray.config import QuestionConfig

MAX_BODY_BYTES = 64 * 1024
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
}


class AnswerBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    slot: str = Field(min_length=1, max_length=64)
    question: str = Field(min_length=1, max_length=64)
    value: Any
    revision: int = Field(ge=0)


def build_app(store: Store, *, admin_bootstrap: int = 200, seed: int = 0) -> FastAPI:
    app = FastAPI(title="sefl-ray annotate", docs_url=None, redoc_url=None, openapi_url=None)
    questions = store.questions()
    by_name = {question["name"]: QuestionConfig.model_validate(question) for question in questions}
    auto_advance = json.loads(store.meta().get("auto_advance", "true"))

    @app.middleware("http")
    async def guard(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            response: Response = JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, 413)
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if request.method == "GET":
            return HTMLResponse(pages.message_page("Not found", "there is no such page in this study"), 404)
        if first.get("type") == "json_invalid":
            return JSONResponse({"detail": "the body is not valid JSON"}, 400)
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
        return JSONResponse({"detail": f"malformed answer: {where}: {first.get('msg', 'invalid')} (send "
                                       '{"slot", "question", "value", "revision"})'}, 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if request.url.path.split("/")[3:4] == ["api"] or request.url.path.endswith(".json"):
            return JSONResponse({"detail": exc.detail}, exc.status_code)
        return HTMLResponse(pages.message_page(_TITLES.get(exc.status_code, "Error"), str(exc.detail)),
                            exc.status_code)

    def annotator_of(token: str) -> str:
        name = store.annotator_for_token(token)
        if name is None:
            raise HTTPException(403, "this link is not valid; ask the study's organiser for yours")
        return name

    def own_slot(annotator: str, slot_id: str):
        slot = store.slot(slot_id)
        if slot is None:
            raise HTTPException(404, f"no item '{slot_id}' in this study")
        if slot["annotator"] != annotator:
            raise HTTPException(403, "this item belongs to another annotator's queue")
        return slot

    def complete(answered: set[str]) -> bool:
        return all(q["name"] in answered for q in questions if q["required"])

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return pages.message_page("sefl-ray annotate", "Open the personal link you were given.")

    @app.get("/static/annotate.js")
    def script() -> Response:
        return Response(pages.JS, media_type="text/javascript")

    @app.get("/static/annotate.css")
    def style() -> Response:
        return Response(pages.CSS, media_type="text/css")

    @app.get("/a/{token}/")
    def resume(token: str) -> RedirectResponse:
        annotator = annotator_of(token)
        answered = store.answered_questions(annotator)
        for position in range(1, store.queue_length(annotator) + 1):
            if not complete(answered.get(position, set())):
                return RedirectResponse(f"/a/{token}/{position}", 303)
        return RedirectResponse(f"/a/{token}/done", 303)

    @app.get("/a/{token}/done", response_class=HTMLResponse)
    def queue(token: str) -> str:
        annotator = annotator_of(token)
        answered = store.answered_questions(annotator)
        total = store.queue_length(annotator)
        rows = [(position, complete(answered.get(position, set()))) for position in range(1, total + 1)]
        return pages.done_page(base=f"/a/{token}", total=total, rows=rows)

    @app.get("/a/{token}/{position}", response_class=HTMLResponse)
    def item_page(token: str, position: int) -> str:
        annotator = annotator_of(token)
        total = store.queue_length(annotator)
        slot = store.slot_at(annotator, position)
        if slot is None:
            raise HTTPException(404, f"there is no item {position}; your items are 1 to {total}")
        item = store.item(slot["item_id"])
        feedback_a, feedback_b = shown_feedback(item, slot["shown_order"])
        answered = store.answered_questions(annotator)
        others = sum(complete(done) for at, done in answered.items() if at != position)
        shown = {"assignment": item["assignment"], "submission": item["submission"], "passage": item["passage"],
                 "feedback_a": feedback_a, "feedback_b": feedback_b}
        return pages.item_page(base=f"/a/{token}", slot_id=slot["slot_id"], position=position, total=total,
                               complete_others=others, item=shown, questions=questions,
                               answers=store.slot_answers(slot["slot_id"]), auto_advance=auto_advance)

    @app.get("/a/{token}/api/slot/{slot_id}")
    def slot_state(token: str, slot_id: str) -> dict[str, Any]:
        slot = own_slot(annotator_of(token), slot_id)
        return {"slot": slot_id, "position": slot["position"], "answers": store.slot_answers(slot_id)}

    @app.post("/a/{token}/api/answer")
    def save(token: str, body: AnswerBody) -> JSONResponse:
        slot = own_slot(annotator_of(token), body.slot)
        question = by_name.get(body.question)
        if question is None:
            raise HTTPException(422, f"no question '{body.question}' (questions: {', '.join(by_name)})")
        try:
            value = check_value(question, body.value)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        try:
            revision = store.save_answer(slot, question.name, value, body.revision)
        except StaleRevision as stale:
            return JSONResponse({"detail": f"'{question.name}' is at revision {stale.revision}, not "
                                           f"{body.revision}: it was saved again since (another tab, or a "
                                           "replayed request); reload to see it",
                                 "current": {"value": stale.value, "revision": stale.revision}}, 409)
        return JSONResponse({"revision": revision})

    def admin(token: str) -> None:
        if not store.is_admin_token(token):
            raise HTTPException(403, "admin routes need the admin token")

    @app.get("/admin/{token}/", response_class=HTMLResponse)
    def admin_page(token: str) -> str:
        admin(token)
        report, reason = live_agreement(store, n_bootstrap=admin_bootstrap, seed=seed)
        return pages.admin_page(progress=progress(store), agreement=report, reason=reason,
                                links={"progress": f"/admin/{token}/progress.json",
                                       "agreement": f"/admin/{token}/agreement.json"})

    @app.get("/admin/{token}/progress.json")
    def admin_progress(token: str) -> list[dict[str, Any]]:
        admin(token)
        return progress(store)

    @app.get("/admin/{token}/agreement.json")
    def admin_agreement(token: str) -> JSONResponse:
        admin(token)
        report, reason = live_agreement(store, n_bootstrap=admin_bootstrap, seed=seed)
        return JSONResponse(report if report is not None else {"report": None, "reason": reason})

    @app.get("/favicon.ico")
    def favicon() -> Response:  # browsers ask for one; no icon, and no 404 in the console
        return Response(status_code=204)

    @app.get("/healthz", response_class=PlainTextResponse)
    def health() -> str:
        return "ok"

    return app


_TITLES = {403: "Not your link", 404: "Not found", 405: "Not allowed", 409: "Changed elsewhere"}
