"""`scripts/dev` installs Debian's influxdb, victoria-metrics and prometheus only so that tests and
the demo can start private copies. Their packaged units must not be left enabled: on the next real
boot an enabled influxdb listens on :8086 on every interface, without authentication."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = ("influxdb.service", "victoria-metrics.service", "prometheus.service")


@pytest.mark.parametrize("unit", UNITS)
def test_packaged_server_units_are_not_left_enabled(unit: str) -> None:
    if shutil.which("systemctl") is None or not Path("/lib/systemd/system", unit).exists():
        pytest.skip(f"{unit} is not installed here")
    state = subprocess.run(
        ["systemctl", "is-enabled", unit], capture_output=True, text=True, check=False
    ).stdout.strip()
    assert state != "enabled", f"{unit} would start on the next boot: run `scripts/dev test`"
