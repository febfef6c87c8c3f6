"""Operator commands, one module each, all answering the same way (render.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

ConfigArg = Callable[[argparse.ArgumentParser], None]


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], config_arg: ConfigArg
) -> None:
    """``config_arg`` adds ``--config`` as every edge-agent command has it."""
    from agent.ops import spool_check, spool_export, status

    status.add_parser(sub, config_arg)
    spool = sub.add_parser("spool", help="check the spool, or export a backlog")
    spool_sub = spool.add_subparsers(dest="spool_command", required=True)
    spool_check.add_parser(spool_sub, config_arg)
    spool_export.add_parser(spool_sub, config_arg)
