"""The ``edge-agent`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from agent import logs
from agent.config import Config, ConfigError, load_config
from agent.redact import Redactor

DEFAULT_CONFIG = Path("/etc/edge-agent/agent.toml")


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"path to agent.toml (default {DEFAULT_CONFIG})",
    )


def build_parser(tools: bool = True) -> argparse.ArgumentParser:
    """``tools``: also the simulate and demo commands and the operator commands. The agent's own
    commands leave them out: a long-running agent would only carry their modules and parsers in
    memory."""
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Durable MQTT to InfluxDB line-protocol forwarder for edge gateways.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent until SIGTERM")
    _config_arg(run)
    check = sub.add_parser("check-config", help="validate and print the effective config")
    _config_arg(check)
    if tools:
        from agent import ops
        from agent.tools import demo, simulate

        simulate.add_parser(sub)
        demo.add_parser(sub)
        ops.add_parsers(sub, _config_arg)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    # A fatal signal prints every thread's Python stack to stderr (the journal): above all the
    # watchdog's SIGABRT, which then says where the agent hung.
    faulthandler.enable()
    cfg = load_config(args.config)
    logs.setup(cfg.agent.log_format, cfg.agent.log_level, Redactor(cfg.secrets()))
    with _without_ca_bundle(cfg):
        from agent import daemon
    try:
        return asyncio.run(daemon.run(cfg))
    except daemon.DataDirLocked as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _without_ca_bundle(cfg: Config) -> Iterator[None]:
    """aiohttp builds a verifying SSL context as it is imported, which parses the system's whole
    CA bundle: 2 MB of RSS. Only an https output that trusts the system's CAs uses that context
    (one with ``tls_ca_file`` or ``tls_insecure`` builds its own, and so does MQTT over TLS), so
    without one OpenSSL is pointed at an empty bundle while aiohttp is imported."""
    if any(
        urlsplit(o.url).scheme == "https" and not (o.tls_ca_file or o.tls_insecure)
        for o in cfg.outputs
    ):
        yield
        return
    saved = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = os.devnull
    try:
        yield
    finally:
        if saved is None:
            del os.environ["SSL_CERT_FILE"]
        else:
            os.environ["SSL_CERT_FILE"] = saved


def _cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    print(json.dumps(cfg.masked(), indent=2))
    print(f"# {args.config}: OK", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    handlers = {"run": _cmd_run, "check-config": _cmd_check_config}
    args = build_parser(tools=not argv or argv[0] not in handlers).parse_args(argv)
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
