"""Entry point of the `specialize` command.

Each command parses its arguments, calls one library function and renders the result. Errors a user can cause
(`SpecializeError`) are printed as `error: ...` lines with a non-zero exit; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from specialize.errors import ConfigError, SpecializeError

BUNDLED_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "legal_cuad_clauses.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specialize", description="Turn a general LLM into a domain specialist."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run every stage: data, train, eval, report")
    p.add_argument(
        "config", nargs="?", type=Path, help=f"run YAML (default: the bundled {BUNDLED_EXAMPLE.stem})"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.learning_rate=1e-4 (repeatable)",
    )
    _processes_option(p)

    tune = sub.add_parser(
        "tune",
        help="search hyperparameters within a time budget, then train the best config next to the default",
        description="An Optuna study (TPE, successive-halving pruning) over the config's search: section (or a default "
        "space), scored by the task's headline metric on a validation sample. The best config is then trained "
        "as a full run next to the default config, with a learning curve; --budget bounds the search, those "
        "runs come after it.",
    )
    tune.add_argument("config", nargs="?", type=Path, help="run YAML (not read with --resume)")
    tune.add_argument(
        "--budget",
        metavar="TIME",
        help="wall time of the search, e.g. 45m, 1h30m, 600s (required for a new study)",
    )
    tune.add_argument(
        "--trials", type=int, metavar="N", help="most trials in the study (default: the budget's)"
    )
    tune.add_argument(
        "--storage",
        metavar="URL",
        help="SQLAlchemy URL of the registry holding runs and study (PostgreSQL to share)",
    )
    tune.add_argument("--workers", type=int, default=1, metavar="K", help="worker processes on this machine")
    tune.add_argument(
        "--resume",
        metavar="STUDY",
        help="continue a study (its run id or directory) after an interrupt or kill",
    )
    tune.add_argument(
        "--search-only",
        action="store_true",
        help="only run trials (e.g. joining a study from another machine)",
    )
    tune.add_argument("--eval-every", type=int, metavar="N", help="training examples between evaluations")
    tune.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="examples the objective is scored on (default 200; 64 for generation)",
    )
    tune.add_argument(
        "--sample-from",
        choices=("validation", "unused-train"),
        default="validation",
        help="where those examples come from: validation rows (the final comparison then leaves them out), or "
        "training rows data.max_train_examples / data.max_per_label left out (the whole validation split stays "
        "for the final comparison)",
    )
    tune.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable)",
    )

    t = sub.add_parser("train", help="continue a stopped run from its last checkpoint, then evaluate it")
    t.add_argument("--resume", required=True, metavar="RUN", help="run id, or the path of a run directory")
    t.add_argument("--registry", help="SQLAlchemy URL of the registry holding the run")
    _processes_option(t)

    e = sub.add_parser("eval", help="evaluate a finished run on another file (a new test set) and record it")
    e.add_argument("run", metavar="RUN", help="run id, or the path of a run directory")
    e.add_argument(
        "--data",
        required=True,
        type=Path,
        help="file to evaluate on, read as the run read its data (format, columns)",
    )
    e.add_argument("--registry", help="SQLAlchemy URL of the registry holding the run")

    x = sub.add_parser("export", help="export a finished run: merged model, adapter, or llama.cpp GGUF file")
    x.add_argument("run", metavar="RUN", help="run id, or the path of a run directory")
    x.add_argument(
        "--format",
        required=True,
        metavar="merged|adapter|gguf",
        help="merged: one Hugging Face model; adapter: the PEFT adapter alone; gguf: one file for llama.cpp",
    )
    x.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write (new or empty)")
    x.add_argument(
        "--dtype", metavar="f16|f32", help="gguf weights: f16 (default, half the size) or f32 (exact)"
    )
    x.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    x.add_argument("--registry", help="SQLAlchemy URL of the registry holding the run")

    c = sub.add_parser(
        "compare", help="compare evaluated runs: each system's headline metric with its interval"
    )
    c.add_argument("runs", nargs="+", metavar="RUN", help="run ids, or paths of run directories")
    c.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    c.add_argument("--registry", help="SQLAlchemy URL of the registry holding the runs")

    par = sub.add_parser(
        "parity",
        help="how close a fine-tuned run comes to the model it replaces, on that model's recorded answers",
    )
    par.add_argument("run", metavar="RUN", help="run id, or the path of a run directory")
    par.add_argument(
        "--reference",
        required=True,
        type=Path,
        metavar="FILE",
        help="chat JSONL of recorded exchanges, each ending with the replaced model's answer",
    )
    par.add_argument("--json", action="store_true", help="print the report as JSON")
    par.add_argument("--registry", help="SQLAlchemy URL of the registry holding the run")

    models = sub.add_parser("models", help="the base model catalogue").add_subparsers(
        dest="action", required=True
    )
    models.add_parser("list", help="catalogue with size, context, licence and cache state")
    pull = models.add_parser("pull", help="bring a catalogue model into the local cache")
    pull.add_argument("name")

    sub.add_parser("runs", help="list the runs in the registry").add_argument(
        "--registry", help="SQLAlchemy URL (default sqlite:///runs/registry.db)"
    )

    s = sub.add_parser(
        "serve",
        aliases=["ui"],
        help="serve the base model and fine-tuned adapters behind an OpenAI-compatible API, and the web "
        "dashboard at /ui (`specialize ui` is the same command)",
        description="Serves the base model and every finished run fine-tuned from it (or the RUNs named), "
        "chosen per request by the `model` field; a run that finishes later is served from its first request. "
        "The web dashboard is at /ui, behind the same API keys.",
    )
    s.add_argument(
        "runs", nargs="*", metavar="RUN", help="serve only these runs (default: every finished run)"
    )
    s.add_argument("--base-model", help="catalogue name or model directory (default: the runs' base model)")
    s.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)"
    )
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--registry", help="SQLAlchemy URL of the registry (default sqlite:///runs/registry.db)")
    s.add_argument("--no-auth", action="store_true", help="serve without API keys (loopback only)")
    s.add_argument("--max-batch", type=int, default=16, help="requests decoded together (default 16)")
    s.add_argument("--max-adapters", type=int, default=4, help="adapters kept in memory (default 4)")
    s.add_argument(
        "--max-tokens", type=int, default=512, help="most tokens one completion may ask (default 512)"
    )
    s.add_argument(
        "--runs-dir",
        help="where fine-tuning jobs' runs and uploaded files go (default: the registry's folder, else runs/)",
    )
    s.add_argument(
        "--fine-tune-config",
        metavar="YAML",
        help="run config that fine-tuning jobs start from (train:, eval:, data: settings); the job sets "
        "the files, base model, seed and hyperparameters",
    )
    s.add_argument(
        "--log-content",
        choices=("none", "redacted", "full"),
        default="redacted",
        help="what the request log keeps of prompts and answers: redacted (default: personal data masked), "
        "full, or none (no text: no drift and no training data from traffic)",
    )
    s.add_argument(
        "--max-upload-mb", type=int, default=512, help="largest training file accepted (default 512 MB)"
    )
    s.add_argument(
        "--max-body-bytes",
        type=int,
        default=4 * 2**20,
        help="largest JSON request body; larger ones get 413 (default 4194304, 4 MB)",
    )

    keys = sub.add_parser("keys", help="API keys of the server").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="make a key; its secret is shown once")
    create.add_argument("--name", default="default", help="what the key is for")
    create.add_argument(
        "--admin", action="store_true", help="the key sees every key's files, jobs and fine-tuned models"
    )
    keys.add_parser("list", help="keys with their state; never their secrets")
    revoke = keys.add_parser("revoke", help="revoke a key; requests with it get 401 at once")
    revoke.add_argument("key_id", metavar="KEY_ID")
    for p in (create, keys.choices["list"], revoke):
        p.add_argument(
            "--registry", help="SQLAlchemy URL of the registry (default sqlite:///runs/registry.db)"
        )

    mon = sub.add_parser(
        "monitor",
        help="traffic, latency, errors, feedback and input drift of a served model; exit 3 when flagged",
        description="MODEL is NAME@alias (e.g. banking77@production), a run id, or any model id the server "
        "answered for. Thresholds come from the answering run's monitor: section. Writes report.json and "
        "report.html into the run's monitor/ folder; exits 3 when drift or a quality drop crosses a threshold.",
    )
    mon.add_argument("model", metavar="MODEL")
    mon.add_argument("--since", help="window: 30m, 12h, 7d, 2w or an ISO date (default: monitor.since, 7d)")
    mon.add_argument("--json", action="store_true", help="print the report as JSON")
    mon.add_argument("--out", type=Path, metavar="DIR", help="write the reports here instead")
    mon.add_argument("--registry", help="SQLAlchemy URL of the registry the server logs to")

    re_ = sub.add_parser(
        "retrain",
        help="train a child of a served run on feedback and new data; gate it against its parent",
        description="The child learns from the parent's data plus corrections (SFT rows), ratings (KTO rows) or "
        "corrections as preference pairs (DPO), and new files; it is evaluated with its parent on the parent's "
        "validation set (plus --golden) and on held-out new examples, and gets the alias `candidate`.",
    )
    re_.add_argument("model", metavar="MODEL", help="the parent: NAME@alias, a run id, or a run directory")
    re_.add_argument("--feedback", action="store_true", help="learn from corrections and ratings of answers")
    re_.add_argument(
        "--data", type=Path, action="append", default=[], metavar="FILE", help="new data (repeatable)"
    )
    re_.add_argument("--golden", type=Path, metavar="FILE", help="examples added to the regression set")
    re_.add_argument("--json", action="store_true", help="print the result as JSON")
    re_.add_argument("--registry", help="SQLAlchemy URL of the registry holding the run")

    pro = sub.add_parser(
        "promote", help="point NAME@ALIAS at a run (a retrained child only if its gate passed)"
    )
    pro.add_argument("run", metavar="RUN", help="run id, NAME@alias, or the path of a run directory")
    pro.add_argument("--alias", required=True, help="production, candidate, or any name")
    pro.add_argument("--force", action="store_true", help="promote a child the gate refused")
    pro.add_argument("--registry", help="SQLAlchemy URL of the registry holding the run")

    rb = sub.add_parser("rollback", help="move an alias back to the run it named before its last promotion")
    rb.add_argument("alias", metavar="[NAME@]ALIAS", help="e.g. production, or banking77@production")
    rb.add_argument("--registry", help="SQLAlchemy URL of the registry (default sqlite:///runs/registry.db)")

    al = sub.add_parser("aliases", help="the aliases in the registry, and with --history every move")
    al.add_argument("name", nargs="?", metavar="NAME", help="only the aliases of this run name")
    al.add_argument("--history", action="store_true", help="every promotion and rollback, oldest first")
    al.add_argument("--registry", help="SQLAlchemy URL of the registry (default sqlite:///runs/registry.db)")

    lp = sub.add_parser(
        "loop",
        help="monitor, retrain, gate and promote in one idempotent command for cron",
        description="Watches NAME@alias (the config's name and monitor.alias); retrains when drift or a quality "
        "drop is flagged or monitor.retrain.min_new_examples new examples came in; promotes the child if the gate "
        "passes. A lock in runs_dir keeps two loops from training at once. Exits 3 when the model is flagged and "
        "no child replaced it.",
    )
    lp.add_argument("config", type=Path, help="the served model's run YAML (its monitor: section)")
    lp.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set monitor.gate.margin=0.01",
    )
    lp.add_argument("--json", action="store_true", help="print the result as JSON")

    data = sub.add_parser("data", help="data preparation").add_subparsers(dest="action", required=True)
    check = data.add_parser(
        "check",
        help="validate and audit data without writing anything; exits non-zero on errors",
        description="FILE is a data file (JSONL, JSON, CSV, TSV, Parquet, text), a folder with train.* and "
        "validation.*, or a run YAML. Tokens are counted with the model's tokenizer when it is cached, "
        "else estimated; nothing is downloaded.",
    )
    check.add_argument("file", type=Path, metavar="FILE")
    check.add_argument("--validation", type=Path, help="validation file, checked for leakage against FILE")
    check.add_argument("--format", help="row format instead of auto-detection (chat, sharegpt, alpaca, ...)")
    check.add_argument("--label-field", help="row key holding the label (default: label)")
    check.add_argument("--base-model", help="whose tokenizer counts tokens (default: the embedded model)")
    check.add_argument("--json", action="store_true", help="print the audit as JSON")
    check.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a data setting, e.g. --set pii.mode=mask or --set columns.prompt=question (repeatable)",
    )
    prep = data.add_parser("prepare", help="write the prepared splits, rejects and audit of a run")
    prep.add_argument("config", type=Path, help="run YAML")
    prep.add_argument("--out", type=Path, help="write the data files here instead of creating a run")
    prep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value",
    )
    return parser


def _processes_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--processes",
        type=_at_least_one,
        default=1,
        metavar="N",
        help="train data-parallel in N processes on this machine (one per GPU, or CPU processes); the global "
        "batch is train.batch_size x train.gradient_accumulation x N",
    )


def _at_least_one(value: str) -> int:
    """`--processes N`: a whole number of processes, 1 or more (0 would silently train in one)."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of processes: give 1 or more")
    return number


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="specialize: %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "httpx", "urllib3", "gguf", "absl"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # transformers sets its own logger's level when it is first imported, undoing the line above: this is the
    # level it sets then (its warnings, such as a tokenized text longer than the model, are ours to report).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # PEFT calls a transformers method that transformers deprecates: a note for PEFT's authors, not our users.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    if args.quiet:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # transformers' own bars (loading weights) too
    try:
        return _dispatch(args, argv)
    except SpecializeError as exc:
        if args.debug:
            raise
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    from specialize.cli import commands
    from specialize.train import distributed

    if distributed.launched():  # one of several processes (torchrun, accelerate launch, --processes)
        if args.command not in ("run", "train"):
            raise ConfigError(
                f"specialize {args.command} runs in one process; only `specialize run` and `specialize train "
                "--resume` train with several (start it without torchrun or accelerate launch)"
            )
        from specialize.cli.processes import follow_launcher

        follow_launcher()
        distributed.current()  # the process group, before anything is written: a bad launch fails at once
        if distributed.rank() > 0:
            return commands.follow()
    elif getattr(args, "processes", 1) > 1:
        from specialize.cli.processes import launch

        if args.command == "run":  # a config mistake is one line here, not one per process
            from specialize.config import load_config

            load_config(args.config or BUNDLED_EXAMPLE, args.overrides)
        return launch(argv, args.processes)
    if args.command == "run":
        return commands.run(args.config or BUNDLED_EXAMPLE, args.overrides, progress=not args.quiet)
    if args.command == "tune":
        return commands.tune(
            args.config,
            args.overrides,
            budget=args.budget,
            trials=args.trials,
            storage=args.storage,
            workers=args.workers,
            resume=args.resume,
            search_only=args.search_only,
            eval_every=args.eval_every,
            sample=args.sample,
            sample_from=args.sample_from,
            progress=not args.quiet,
        )
    if args.command == "train":
        return commands.train_resume(args.resume, args.registry, progress=not args.quiet)
    if args.command == "eval":
        return commands.eval_run(args.run, args.data, args.registry, progress=not args.quiet)
    if args.command == "export":
        return commands.export(args.run, args.format, args.out, args.registry, args.force, args.dtype)
    if args.command == "compare":
        return commands.compare(args.runs, args.registry, args.format)
    if args.command == "parity":
        return commands.parity(args.run, args.reference, args.registry, args.json)
    if args.command == "models":
        return commands.models_list() if args.action == "list" else commands.models_pull(args.name)
    if args.command == "runs":
        return commands.runs(args.registry)
    if args.command in ("serve", "ui"):
        return commands.serve(
            base_model=args.base_model,
            runs=args.runs,
            host=args.host,
            port=args.port,
            registry=args.registry,
            auth=not args.no_auth,
            max_batch=args.max_batch,
            max_adapters=args.max_adapters,
            max_tokens=args.max_tokens,
            runs_dir=args.runs_dir,
            fine_tune_config=args.fine_tune_config,
            max_upload_mb=args.max_upload_mb,
            max_body_bytes=args.max_body_bytes,
            log_content=args.log_content,
        )
    if args.command == "monitor":
        return commands.monitor(args.model, args.since, args.out, args.registry, args.json)
    if args.command == "retrain":
        return commands.retrain(
            args.model,
            args.feedback,
            args.data,
            args.golden,
            args.registry,
            args.json,
            progress=not args.quiet,
        )
    if args.command == "promote":
        return commands.promote(args.run, args.alias, args.registry, args.force)
    if args.command == "rollback":
        return commands.rollback(args.alias, args.registry)
    if args.command == "aliases":
        return commands.aliases(args.name, args.history, args.registry)
    if args.command == "loop":
        return commands.loop(args.config, args.overrides, args.json, progress=not args.quiet)
    if args.command == "keys":
        if args.action == "create":
            return commands.keys_create(args.name, args.registry, admin=args.admin)
        if args.action == "revoke":
            return commands.keys_revoke(args.key_id, args.registry)
        return commands.keys_list(args.registry)
    if args.action == "prepare":
        return commands.data_prepare(args.config, args.overrides, args.out)
    options = {"format": args.format, "label_field": args.label_field}
    settings = [f"{key}={value}" for key, value in options.items() if value] + args.overrides
    return commands.data_check(args.file, args.validation, args.base_model, settings, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
