"""A throwaway certificate authority made with openssl, for TLS tests: a CA, a server
certificate for 127.0.0.1 and a client certificate, all valid for two days."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.tools.localservers import TLSFiles


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> TLSFiles:
    """ca.pem/ca.key, server.pem/server.key (CN and SAN 127.0.0.1), client.pem/client.key in
    ``d``; returns the server's files."""
    d.mkdir(parents=True, exist_ok=True)
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "edge-agent")):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.pem",
            "-extfile",
            "san.cnf",
            cwd=d,
        )
    return TLSFiles(cert=d / "server.pem", key=d / "server.key", ca=d / "ca.pem")
