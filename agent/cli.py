"""The ``edge-agent`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from agent import logs
from agent.config import ConfigError, load_config

DEFAULT_CONFIG = Path("/etc/edge-agent/agent.toml")


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"path to agent.toml (default {DEFAULT_CONFIG})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Durable MQTT to InfluxDB line-protocol forwarder for edge gateways.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent until SIGTERM")
    _config_arg(run)
    check = sub.add_parser("check-config", help="validate and print the effective config")
    _config_arg(check)
    from agent.tools import simulate

    simulate.add_parser(sub)
    from agent.tools import demo

    demo.add_parser(sub)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from agent import daemon

    cfg = load_config(args.config)
    logs.setup(cfg.agent.log_format, cfg.agent.log_level)
    try:
        return asyncio.run(daemon.run(cfg))
    except daemon.DataDirLocked as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1


def _cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    print(json.dumps(cfg.masked(), indent=2))
    print(f"# {args.config}: OK", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"run": _cmd_run, "check-config": _cmd_check_config}
    try:
        if args.command in handlers:
            return handlers[args.command](args)
        result: int = args.handler(args)
        return result
    except ConfigError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
