"""Model store commands: pull, list, show, rm, cp, create, backup, restore. They work on the
cache directory directly; no daemon is needed."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from ..models.aliases import EMBEDDED_NAME, check_name
from ..models.gguf import human_params, read_gguf
from ..models.store import ModelStore
from .progress import human_size, make_progress


def _store(args: argparse.Namespace) -> ModelStore:
    from ..models.registry import default_cache_dir

    return ModelStore(Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir())


def cmd_pull(args: argparse.Namespace) -> int:
    from ..models.pull import Puller

    store = _store(args)
    for name in args.names:
        check_name(name)
        progress = make_progress()
        try:
            manifest = Puller(store).pull(name, progress)
        finally:
            progress.close()
        if manifest is None:
            print(f"{name} is built in; nothing to download")
        else:
            print(f"pulled {name} ({manifest.id}, {human_size(manifest.size)})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = [("NAME", "ID", "SIZE", "QUANT", "MODIFIED")]
    for m in _store(args).list():
        modified = datetime.fromtimestamp(m.modified).strftime("%Y-%m-%d %H:%M")
        rows.append((m.name, m.id, human_size(m.size), m.quant or "-", modified))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def model_details(store: ModelStore, name: str) -> dict[str, Any]:
    """What ``show`` prints, from the GGUF metadata plus a custom model's settings."""
    from ..models.registry import resolve

    ref = resolve(name, cache_dir=store.root)
    info = read_gguf(ref.path)
    manifest = store.get(name) if name != EMBEDDED_NAME else None
    return {
        "name": ref.name,
        "id": manifest.id if manifest else None,
        "path": str(ref.path),
        "architecture": info.architecture,
        "parameters": info.parameter_count,
        "parameter_size": human_params(info.parameter_count),
        "context_length": info.context_length,
        "embedding_length": info.arch_key("embedding_length"),
        "quantization": info.quantization,
        "chat_template": info.chat_template,
        "license": info.get("general.license"),
        "size": ref.path.stat().st_size if not manifest else manifest.size,
        "source": manifest.source if manifest else {},
        "system": ref.system,
        "template": ref.template,
        "defaults": dict(ref.parameters),
    }


def cmd_show(args: argparse.Namespace) -> int:
    details = model_details(_store(args), args.name)
    if args.json:
        print(json.dumps(details, indent=2))
        return 0
    labels = [
        ("architecture", "architecture"),
        ("parameter_size", "parameters"),
        ("context_length", "context length"),
        ("embedding_length", "embedding length"),
        ("quantization", "quantization"),
        ("license", "license"),
        ("system", "system"),
        ("defaults", "parameters (defaults)"),
    ]
    print(details["name"])
    for key, label in labels:
        value = details[key]
        if value not in (None, {}, ""):
            print(f"  {label:22} {value}")
    template = details["template"] or details["chat_template"]
    if template:
        print("  chat template:")
        for line in template.splitlines():
            print(f"    {line}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    store = _store(args)
    for name in args.names:
        check_name(name)
        removed = store.remove(name)
        extra = f" (freed {len(removed)} file{'s' if len(removed) != 1 else ''})" if removed else ""
        print(f"deleted {name}{extra}")
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    check_name(args.source)
    check_name(args.destination)
    _store(args).copy(args.source, args.destination)
    print(f"copied {args.source} to {args.destination}")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from ..models.custom import create_model, load_definition

    check_name(args.name)
    path = Path(args.file)
    definition = load_definition(path)
    manifest = create_model(_store(args), args.name, definition, base_dir=path.parent)
    print(f"created {args.name} ({manifest.id}) from {definition.from_}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from ..models.backup import backup

    target = Path(args.file)
    index = backup(_store(args), target, models=args.models, sessions=args.sessions)
    print(
        f"backed up {len(index['manifests'])} models"
        + (f" and {len(index['blobs'])} files" if args.models else "")
        + (f" and {len(index['sessions'])} saved conversations" if args.sessions else "")
        + f" to {target}"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from ..models.backup import restore

    result = restore(_store(args), Path(args.file), force=args.force)
    print(f"restored {len(result['models'])} models and {result['blobs']} files"
          + (f" and {result['sessions']} saved conversations" if result["sessions"] else ""))  # fmt: skip
    for name in result["missing"]:
        print(f"warning: {name} has no model file in this store; pull it again", file=sys.stderr)
    return 0


def add_model_commands(sub: Any) -> None:
    def parser(name: str, help: str, func: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--cache-dir", help="model store (default: $MULLAMA_CACHE_DIR)")
        p.set_defaults(func=func)
        return p

    p = parser("pull", "download models from Hugging Face into the store", cmd_pull)
    p.add_argument("names", nargs="+", metavar="NAME")
    parser("list", "list the models in the store", cmd_list)
    p = parser("show", "show a model's details (from its GGUF metadata)", cmd_show)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = parser("rm", "delete models (a file goes when no other name uses it)", cmd_rm)
    p.add_argument("names", nargs="+", metavar="NAME")
    p = parser("cp", "copy a model to a new name", cmd_cp)
    p.add_argument("source", metavar="SRC")
    p.add_argument("destination", metavar="DST")
    p = parser("create", "create a custom model from a YAML definition", cmd_create)
    p.add_argument("name", metavar="NAME")
    p.add_argument("-f", "--file", required=True, help="model definition (YAML)")
    p = parser(
        "backup", "write manifests (and with --models, model files) to a .tar.gz", cmd_backup
    )
    p.add_argument("file", metavar="FILE.tar.gz")
    p.add_argument("--models", action="store_true", help="include the model files")
    p.add_argument("--sessions", action="store_true",
                   help="include the saved conversations (KV states) of <cache dir>/sessions")  # fmt: skip
    p = parser("restore", "restore a backup (verifies checksums)", cmd_restore)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--force", action="store_true", help="overwrite models that differ")
