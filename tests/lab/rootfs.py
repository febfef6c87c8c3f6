"""Debian root file systems for the tests that need a whole machine: a booted systemd for the
unit and the Ansible role, an arm64 userland for the Raspberry Pi check, a docker base image.

Built once with debootstrap and cached under ``.cache/rootfs`` (git-ignored): a build takes one
to four minutes, a test takes a copy (a hard-linked one when it can) and throws it away. The
mirror and the apt, pip and CA settings come from this machine, never from a hard-coded host,
so a rootfs reaches exactly the registries the machine itself reaches.

Run as a script to build (or reuse) one and print its path:
``python -m tests.lab.rootfs [--arch arm64] [--include pkg,pkg]``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "rootfs"
SUITE = "bookworm"
# What a booted test machine needs besides minbase: systemd as PID 1, a venv for the agent.
BOOT_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "procps",
    "ca-certificates",
)
PIP_ENV = (
    "PIP_FIND_LINKS",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_DISABLE_PIP_VERSION_CHECK",
)


class LabUnavailable(RuntimeError):
    """The machine cannot build or run this rootfs (not root, no debootstrap, no binfmt)."""


def host_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 ``.sources`` or a one-line list)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in [*sources, Path("/etc/apt/sources.list")]:
        if not path.is_file():
            continue
        text = path.read_text()
        for match in re.finditer(r"^URIs:\s*(\S+)", text, re.M):
            if "security" not in match.group(1):
                return match.group(1)
        for match in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.M):
            if "security" not in match.group(1):
                return match.group(1)
    raise LabUnavailable("no Debian mirror found in /etc/apt/sources.list(.d)")


def _key(arch: str, include: Sequence[str]) -> str:
    digest = hashlib.sha256(",".join(sorted(include)).encode()).hexdigest()[:10]
    return f"{SUITE}-{arch}-{digest}"


def _require(*commands: str) -> None:
    if os.geteuid() != 0:
        raise LabUnavailable("building a rootfs needs root")
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        raise LabUnavailable(f"missing {', '.join(missing)}: run `scripts/dev test`")


def _copy_host_settings(root: Path) -> None:
    """apt, pip and CA settings, so apt-get and pip inside reach what the host reaches."""
    for sub in ("apt/sources.list.d", "apt/apt.conf.d"):
        src = Path("/etc") / sub
        if src.is_dir():
            for f in src.iterdir():
                if f.is_file() and f.suffix in {".sources", ".list", ""}:
                    shutil.copy2(f, root / "etc" / sub / f.name)
    if Path("/etc/apt/sources.list").is_file():
        shutil.copy2("/etc/apt/sources.list", root / "etc/apt/sources.list")
    if Path("/etc/pip.conf").is_file():
        shutil.copy2("/etc/pip.conf", root / "etc/pip.conf")
    extra = root / "usr/local/share/ca-certificates"
    extra.mkdir(parents=True, exist_ok=True)
    for cert in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy2(cert, extra / cert.name)
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        (root / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle, root / "etc/ssl/certs/ca-certificates.crt")


def build(arch: str = "amd64", include: Sequence[str] = BOOT_PACKAGES) -> Path:
    """The cached rootfs for ``arch`` with ``include`` installed, built on first use. A lock file
    lets parallel test runs share one build."""
    _require("debootstrap")
    if arch != _host_arch():
        binfmt = Path(f"/proc/sys/fs/binfmt_misc/qemu-{_qemu_name(arch)}")
        if not binfmt.exists() or "enabled" not in binfmt.read_text():
            raise LabUnavailable(
                f"qemu-{_qemu_name(arch)} is not registered with binfmt_misc: "
                "run `scripts/dev test`"
            )

    def debootstrap(partial: Path) -> None:
        subprocess.run(
            [
                "debootstrap",
                f"--arch={arch}",
                "--variant=minbase",
                f"--include={','.join(include)}",
                SUITE,
                str(partial),
                host_mirror(),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=1200,
        )
        _copy_host_settings(partial)
        # Package scripts inside must not start services: tests start what they test.
        # (debootstrap keeps its own policy-rc.d while it configures the --include packages,
        # and removes it at the end.)
        policy = partial / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)

    return _cached(CACHE / _key(arch, include), debootstrap)


def layer(base: Path, name: str, recipe: str, prepare: Callable[[Path], None]) -> Path:
    """A cached rootfs made from ``base`` by ``prepare`` (run on a copy of it): a venv with the
    project's dependencies, say. Keyed on ``recipe`` (what ``prepare`` installs), so it is rebuilt
    when that changes, and the layers of older recipes are removed then."""
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:10]
    target = CACHE / f"{base.name}-{name}-{digest}"

    def make(partial: Path) -> None:
        for old in CACHE.glob(f"{base.name}-{name}-*"):
            if old.is_dir() and old != target and old.suffix != ".partial":
                shutil.rmtree(old, ignore_errors=True)
        subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(partial)], check=True)
        (partial / ".complete").unlink()
        prepare(partial)

    return _cached(target, make)


def _cached(target: Path, make: Callable[[Path], None]) -> Path:
    """``target``, made by ``make`` into a partial folder first unless a complete one exists;
    the lock file lets parallel runs share one build."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        shutil.rmtree(target, ignore_errors=True)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        make(partial)
        partial.rename(target)
        (target / ".complete").touch()
        return target


@contextmanager
def copy(base: Path, dest: Path) -> Iterator[Path]:
    """A throw-away copy of ``base`` at ``dest``: hard links where the file system allows
    (files a test rewrites are replaced, not edited in place, by apt, pip and systemd)."""
    try:
        subprocess.run(
            ["cp", "-a", "--reflink=auto", str(base), str(dest)], check=True, timeout=600
        )
        yield dest
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def pip_env() -> list[str]:
    """``--setenv`` arguments handing the host's pip settings to systemd-nspawn."""
    return [f"--setenv={k}={os.environ[k]}" for k in PIP_ENV if k in os.environ]


def pip_binds() -> list[str]:
    """Read-only binds of local wheel folders that ``PIP_FIND_LINKS`` points at."""
    links = os.environ.get("PIP_FIND_LINKS", "")
    return [f"--bind-ro={p}" for p in links.split() if p.startswith("/") and Path(p).is_dir()]


def _host_arch() -> str:
    out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    return out.stdout.strip() or "amd64"


def _qemu_name(arch: str) -> str:
    return {"arm64": "aarch64", "armhf": "arm", "amd64": "x86_64"}.get(arch, arch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="amd64")
    parser.add_argument("--include", default=",".join(BOOT_PACKAGES))
    args = parser.parse_args(argv)
    print(build(args.arch, [p for p in args.include.split(",") if p]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
