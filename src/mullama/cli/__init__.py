"""The ``mullama`` command."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..config import add_settings_arguments, load_settings, settings_markdown
from ..errors import MullamaError
from .models import add_model_commands


def _serve(args: argparse.Namespace) -> int:
    from ..daemon.server import serve

    values = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    try:
        settings = load_settings(values)
    except ValueError as exc:
        print(f"mullama: invalid configuration: {exc}", file=sys.stderr)
        return 1
    return serve(settings)


def _config_docs(args: argparse.Namespace) -> int:
    sys.stdout.write(settings_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mullama", description="LLM inference daemon")
    parser.add_argument("--version", action="version", version=f"mullama {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the daemon")
    add_settings_arguments(serve)
    serve.set_defaults(func=_serve)
    from . import ps

    ps.add_parser(sub)
    config = sub.add_parser("config", help="configuration helpers")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    docs = config_sub.add_parser("docs", help="print the flag/env reference as Markdown")
    docs.set_defaults(func=_config_docs)
    add_model_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except MullamaError as exc:
        print(f"mullama: {exc.message}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("mullama: interrupted", file=sys.stderr)
        code = 1
    sys.exit(code)
