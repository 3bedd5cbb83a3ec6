"""The ``mullama`` command."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..config import (
    add_settings_arguments,
    effective_config,
    load_settings,
    settings_markdown,
)
from .daemon import add_daemon_commands


def _settings(args: argparse.Namespace):  # -> Settings | None
    values = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config_command")}
    try:
        return load_settings(values)
    except ValueError as exc:
        print(f"mullama: invalid configuration: {exc}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    from ..daemon.server import serve

    settings = _settings(args)
    return 1 if settings is None else serve(settings)


def _config_show(args: argparse.Namespace) -> int:
    import yaml

    settings = _settings(args)
    if settings is None:
        return 1
    sys.stdout.write(yaml.safe_dump(effective_config(settings), sort_keys=False))
    return 0


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
    config = sub.add_parser("config", help="configuration helpers")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    docs = config_sub.add_parser("docs", help="print the flag/env reference as Markdown")
    docs.set_defaults(func=_config_docs)
    show = config_sub.add_parser(
        "show", help="print the effective configuration (secrets redacted); takes serve's flags"
    )
    add_settings_arguments(show)
    show.set_defaults(func=_config_show)
    add_daemon_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
