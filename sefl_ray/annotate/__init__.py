"""The human rating study: blind A/B comparisons of two systems' feedback by teachers, stored in SQLite, whose
ratings feed `sefl-ray agreement` beside the LLM judges.

    study.py     `annotate create`: infer outputs -> items, queues, tokens, in the database; the links
    sources.py   reading system outputs and each item's context (assignment, student answer, passage)
    plan.py      which annotator sees which item, in which A/B order (seeded), repeats and gold items
    questions.py the question set (SEFL's by default) and what counts as a valid answer
    store.py     the SQLite database (WAL): schema, answers with revisions, progress
    app.py       the FastAPI app (annotator pages and API, admin view); server.py runs it with uvicorn
    pages.py     server-rendered HTML, CSS and the small keyboard/save script
    export.py    `annotate export`: the long form `agreement` reads, preference pairs, the raw answers
    quality.py   self-consistency on repeated items, accuracy on gold items, live agreement for the admin
    sefl_import.py `annotate import`: SEFL-style spreadsheets (one CSV per annotator + a key) -> long form
    synthetic.py a synthetic run to rate (tests, bench/annotate_load.py, trying the app without a run)
"""
