"""Operator commands, one module each, all answering the same way (render.py)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

ConfigArg = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], int]


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
    _doctor_and_dead_letters(sub, config_arg)


def _lazy(module: str, function: str) -> Handler:
    """A handler whose module (aiohttp, influxdb-client, the forward stage) is imported only
    when its command runs, not for every ``edge-agent`` invocation."""
    return lambda args: int(getattr(importlib.import_module(module), function)(args))


def _doctor_and_dead_letters(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], config_arg: ConfigArg
) -> None:
    from agent.ops import render

    doctor = sub.add_parser("doctor", help="check config, broker and outputs; exit 1 on a problem")
    doctor.set_defaults(handler=_lazy("agent.ops.doctor", "main"))
    dead = sub.add_parser("dead-letters", help="list or replay what was set aside")
    actions = dead.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="dead letters grouped by reason, with samples")
    listing.add_argument("--output", metavar="NAME", help="only the lines NAME refused")
    listing.set_defaults(handler=_lazy("agent.ops.deadletters", "list_main"))
    replay = actions.add_parser("replay", help="send an output's refused lines again")
    replay.add_argument("--output", metavar="NAME", required=True)
    replay.set_defaults(handler=_lazy("agent.ops.deadletters", "replay_main"))
    for parser in (doctor, listing, replay):
        config_arg(parser)
        render.add_json_arg(parser)
