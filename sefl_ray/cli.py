"""`sefl-ray <stage> CONFIG [--set key=value ...]`: argument parsing only; each stage is a `run_<stage>` function.

The stage commands come from the registry (`sefl_ray/stages.py`); the tools around them (pipeline, merge, report,
agreement, push, endpoints, annotate, models) are listed here.

Errors a user can cause (`SeflError`) print one line on stderr and exit 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from sefl_ray.errors import SeflError
from sefl_ray.stages import STAGES, get_stage

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake (a bad option, a missing argument) printed like every other user error: one
    line on stderr, exit 2; `--help` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sefl-ray",
        description="Synthetic educational feedback loops on Ray: synthesize, fine-tune, serve and judge.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    stages = parser.add_subparsers(dest="command", metavar="STAGE", required=True)

    with_config = argparse.ArgumentParser(add_help=False)
    with_config.add_argument("config", help="YAML config, e.g. jobs/local.yaml")
    with_config.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override any config field, e.g. --set ray.num_cpus=2 (repeatable)",
    )
    with_config.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")

    pipeline = stages.add_parser(
        "pipeline", parents=[with_config], help="run every stage in order, skipping finished ones",
        description="Run every stage in order on one config: the whole loop on a laptop or a cluster. A stage "
        "whose outputs exist with the same config fingerprint is skipped; RUN_DIR/manifest.json records each stage.",
    )
    from_or_only = pipeline.add_mutually_exclusive_group()
    from_or_only.add_argument("--from", dest="start", metavar="STAGE", help="re-run STAGE and every stage after it")
    from_or_only.add_argument("--only", metavar="STAGE", help="run STAGE alone (even if it is current)")
    for stage in STAGES:  # every stage with a command of its own: `sefl-ray <stage> CONFIG`
        if stage.entry is None:
            continue
        command = stages.add_parser(stage.name, parents=[with_config], help=stage.help,
                                    description=stage.description or stage.help)
        for option, option_help in stage.options:
            command.add_argument(f"--{option.replace('_', '-')}", dest=option, action="store_true", help=option_help)
    merge = stages.add_parser(
        "merge", help="turn a sharded training checkpoint into one Hugging Face model folder",
        description="Merge the last (or a named) checkpoint of a training run into RUN/train/merged "
        "(and RUN/train/adapter for LoRA), checking the merged logits against the trained ones.",
    )
    merge.add_argument("run", help="run dir (e.g. runs/local) or a checkpoint folder")
    merge.add_argument("--checkpoint", help="checkpoint name (step_000040 or 40) or folder; default: the last one")
    merge.add_argument("--out", help="folder that receives merged/ (and adapter/); default: RUN/train")
    report = stages.add_parser(
        "report", help="one self-contained HTML report (and markdown) of a run's judgments and agreement",
        description="Write RUN_DIR/report/report.html (plots inlined, opens offline) and report.md.",
    )
    report.add_argument("run_dir", help="run dir, e.g. runs/local")
    agreement = stages.add_parser(
        "agreement", help="agreement statistics of judges and humans on ratings in long form; judge calibration",
        description="Cohen's kappa per rater pair, Fleiss' kappa and Krippendorff's alpha over the humans, each "
        "judge against the human majority, position bias and win rates, with seeded 95 % bootstrap CIs; and the "
        "judges' calibration against humans: the human ceiling (leave-one-out, as AlpacaEval scores annotators), "
        "each judge's leave-one-out agreement, accuracy on unanimous and split items, first-position and "
        "prefers-longer rates, per system pair. A judge under kappa 0.4 is flagged, one under 0 as inverted or "
        "broken.",
    )
    agreement.add_argument("ratings", nargs="+", help="CSV, JSONL or parquet files: item_id, rater, rater_kind, "
                           "choice (A/B/tie) or score [, dimension, system_a, system_b, length_a, length_b, "
                           "order (shown/both)]")
    agreement.add_argument("--out", required=True, help="folder that receives agreement.json")
    agreement.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    agreement.add_argument("--seed", type=int, default=0)
    push = stages.add_parser(
        "push", help="upload a dataset or model folder to the Hugging Face Hub",
        description="Upload a folder (an export, a merged model) to the Hub; the token comes from $HF_TOKEN.",
    )
    push.add_argument("folder", help="folder to upload, e.g. runs/local/export")
    push.add_argument("--repo", required=True, help="Hub repo id, e.g. me/sefl-synthetic")
    push.add_argument("--repo-type", choices=["dataset", "model"], default="dataset")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token-env", default="HF_TOKEN", help="environment variable holding the Hub token")
    push.add_argument("--dry-run", action="store_true", help="list what would be uploaded; contact nothing")
    stages.add_parser(
        "endpoints", parents=[with_config], help="check the config's endpoints: keys set, servers answering",
        description="Check each endpoint of the config: its API key variable is set and one tiny call succeeds.",
    )
    annotate = stages.add_parser(
        "annotate", help="blind human rating study: create it, serve the web app, export or import ratings",
        description="A blind A/B rating study of two or more systems' feedback by people: `create` builds it from "
        "the run's infer outputs (personal links, admin link), `serve` runs the web app (127.0.0.1), `export` "
        "writes the ratings in the long form `sefl-ray agreement` reads plus preference pairs, `import` reads "
        "SEFL-style spreadsheets into that long form.",
    )
    annotate_actions = annotate.add_subparsers(dest="annotate_action", metavar="ACTION", required=True)
    annotate_actions.add_parser("create", parents=[with_config], help="create the study and print the links")
    annotate_actions.add_parser("serve", parents=[with_config], help="serve the rating app (annotate.host/port)")
    annotate_export = annotate_actions.add_parser(
        "export", parents=[with_config], help="ratings (long form), preference pairs and every answer, unblinded")
    annotate_export.add_argument("--out", help="folder for the files; default: STUDY_DIR/export")
    annotate_import = annotate_actions.add_parser(
        "import", help="SEFL-style spreadsheets (one CSV per annotator + a key CSV) -> long-form ratings",
        description="Read one CSV per annotator (Appendix_assignment, Assignment, Sense, Model A, Model B, "
        "Preferred, Comments) and a key CSV (Assignment, A, B) and write OUT/ratings.jsonl in the long form "
        "`sefl-ray agreement` reads; the rater is each file's name without .csv.")
    annotate_import.add_argument("annotator_csvs", nargs="+", help="one CSV per annotator")
    annotate_import.add_argument("--key", required=True, help="key CSV: Assignment, A, B (system behind each side)")
    annotate_import.add_argument("--out", required=True, help="folder that receives ratings.jsonl")
    models = stages.add_parser("models", help="embedded models: prepare them offline as HF folders")
    models_commands = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    prepare = models_commands.add_parser(
        "prepare", help="convert an embedded model (default: smollm2-135m) into an HF folder, offline",
        description="Convert an embedded GGUF model into a plain Hugging Face folder in the cache, once.",
    )
    prepare.add_argument("name", nargs="?", default="smollm2-135m", help="embedded model name")
    prepare.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        _dispatch(args)
    except SeflError as exc:
        if args.debug:
            raise
        print(f"sefl-ray {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # a folder it may not write, a full disk: the outputs before it are kept (durable.py)
        if args.debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"sefl-ray {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"sefl-ray {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def _dispatch(args: argparse.Namespace) -> None:
    if args.command == "models":
        from sefl_ray.models import prepare_embedded_model

        print(prepare_embedded_model(args.name, force=args.force))
        return

    if args.command == "push":
        from sefl_ray.data.hub import push_folder

        result = push_folder(args.folder, args.repo, repo_type=args.repo_type, private=args.private,
                             token_env=args.token_env, dry_run=args.dry_run)
        print("\n".join([result.get("url") or f"dry run: {result['repo_id']}", *result["files"]]))
        return

    if args.command == "report":
        from sefl_ray.report.run import run_report

        print(run_report(args.run_dir))
        return

    if args.command == "agreement":
        from sefl_ray.judge.agreement import run_agreement

        print(run_agreement(args.ratings, args.out, n_bootstrap=args.bootstrap, seed=args.seed))
        return

    if args.command == "annotate" and args.annotate_action == "import":
        from sefl_ray.annotate.sefl_import import import_sefl

        print(import_sefl(args.key, args.annotator_csvs, args.out))
        return

    if args.command == "merge":
        from sefl_ray.train.merge import merge_run

        print(merge_run(args.run, checkpoint=args.checkpoint, out_dir=args.out))
        return

    from sefl_ray.config import load_config

    config = load_config(args.config, args.overrides)
    if args.address:
        config.ray.address = args.address
    _warn_if_outputs_land_in_a_job_copy(config.run_dir)
    if args.command == "pipeline":
        from sefl_ray.pipeline import run_pipeline
        from sefl_ray.run_lock import run_lock

        with run_lock(config.run_dir, args.command):
            print(run_pipeline(config, start=args.start, only=args.only))
    elif args.command == "annotate":
        _dispatch_annotate(args.annotate_action, config, args)
    elif args.command == "endpoints":
        from sefl_ray.llm.check import run_endpoint_check

        print(run_endpoint_check(config))
    else:
        from sefl_ray.run_lock import run_lock

        stage = get_stage(args.command)
        with run_lock(config.run_dir, args.command):
            print(stage.run(config, **{option: getattr(args, option) for option, _ in stage.options}))


def _dispatch_annotate(action: str, config, args: argparse.Namespace) -> None:
    if action == "create":
        from sefl_ray.annotate.study import create_study, format_links

        print(format_links(create_study(config)))
    elif action == "serve":
        from sefl_ray.annotate.server import serve_study

        serve_study(config)
    elif action == "export":
        from sefl_ray.annotate.export import export_study

        print(export_study(config, args.out))


def _warn_if_outputs_land_in_a_job_copy(run_dir: str) -> None:
    """`ray job submit --working-dir .` runs the driver in a temporary copy of that folder, which Ray deletes later:
    a relative run_dir would put the outputs there, so say where they go instead of letting them vanish quietly."""
    import json
    import os
    from pathlib import Path

    job_config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not job_config or Path(run_dir).is_absolute():
        return
    if json.loads(job_config).get("runtime_env", {}).get("working_dir"):
        logging.getLogger("sefl_ray").warning(
            "run_dir %r is relative and this Ray job runs in a temporary copy of its working dir: outputs go to %s. "
            "Pass an absolute run_dir on storage the cluster keeps (--set run_dir=/shared/...).",
            run_dir, Path(run_dir).resolve())


if __name__ == "__main__":
    sys.exit(main())
