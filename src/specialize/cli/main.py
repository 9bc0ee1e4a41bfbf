"""Entry point of the `specialize` command.

Each command parses its arguments, calls one library function and renders the result. Errors a user can cause
(`SpecializeError`) are printed as `error: ...` lines with a non-zero exit; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from specialize.errors import SpecializeError

BUNDLED_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "legal_unfair_tos.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specialize", description="Turn a general LLM into a domain specialist.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run every stage: data, train, eval, report")
    p.add_argument("config", nargs="?", type=Path, help=f"run YAML (default: the bundled {BUNDLED_EXAMPLE.stem})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.learning_rate=1e-4 (repeatable)")

    models = sub.add_parser("models", help="the base model catalogue").add_subparsers(dest="action", required=True)
    models.add_parser("list", help="catalogue with size, context, licence and cache state")
    pull = models.add_parser("pull", help="bring a catalogue model into the local cache")
    pull.add_argument("name")

    sub.add_parser("runs", help="list the runs in the registry").add_argument(
        "--registry", help="SQLAlchemy URL (default sqlite:///runs/registry.db)")

    data = sub.add_parser("data", help="data preparation").add_subparsers(dest="action", required=True)
    check = data.add_parser("check", help="validate a chat JSONL file and print its audit")
    check.add_argument("file", type=Path)
    check.add_argument("--label-field", default="label")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="specialize: %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return _dispatch(args)
    except SpecializeError as exc:
        if args.debug:
            raise
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from specialize.cli import commands

    if args.command == "run":
        return commands.run(args.config or BUNDLED_EXAMPLE, args.overrides, progress=not args.quiet)
    if args.command == "models":
        return commands.models_list() if args.action == "list" else commands.models_pull(args.name)
    if args.command == "runs":
        return commands.runs(args.registry)
    return commands.data_check(args.file, args.label_field)


if __name__ == "__main__":
    raise SystemExit(main())
