"""`python -m worker_<kind>.manager [--preload MODEL] [--replicas R] [--name N] [--capacity C]`:
the command line of a manager (managers/manager.py), shared by every worker kind."""

from __future__ import annotations

import argparse
import logging
import sys

from contract.keys import Kind
from contract.modelref import InvalidModelRef, parse_model_ref
from contract.settings import Settings
from managers.manager import Manager


def main(kind: Kind, argv: list[str] | None = None) -> int:
    """The CLI of `python -m worker_<kind>.manager`."""
    parser = argparse.ArgumentParser(
        prog=f"python -m worker_{kind}.manager", description=f"Start and supervise this machine's {kind} workers."
    )
    parser.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="MODEL",
        help="start workers for MODEL now (see --replicas), kept alive forever (repeatable)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        metavar="R",
        help="workers per --preload model (default PRELOAD_REPLICAS; 0 there: one per GPU, or 1 without GPUs)",
    )
    parser.add_argument("--name", default=None, help="registry name (default: <kind>-manager.<host>.<pid>)")
    parser.add_argument("--capacity", type=int, default=None, help="passed to the workers it starts")
    args = parser.parse_args(argv)
    if args.replicas is not None and not 1 <= args.replicas <= 64:
        parser.error("--replicas must be between 1 and 64")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    preload = []
    for model in args.preload:
        if not model:  # `--preload ""`: an unset *_MODEL means a manager with no model yet
            continue
        try:
            preload.append(parse_model_ref(model, settings.model_roots).name)
        except InvalidModelRef as exc:
            print(f"error: --preload {model}: {exc}", file=sys.stderr)
            return 2
    return Manager(settings, kind, name=args.name, capacity=args.capacity, replicas=args.replicas).run(preload)
