"""What the agent does differently under systemd, without systemd: secrets read from the
credentials directory LoadCredential= fills, and logs written for the journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import config as config_module
from agent.config import ConfigError, load_config

CONFIG = """
[agent]
data_dir = "{data}"
[mqtt]
url = "mqtt://127.0.0.1:1883"
username = "edge"
password_file = "$CREDENTIALS_DIRECTORY/mqtt-password"
[mqtt.tls]
key_file = "${{CREDENTIALS_DIRECTORY}}/mqtt-client-key"
[[mqtt.subscriptions]]
topic = "plant/{{line}}/{{measurement}}"
[[outputs]]
name = "cloud"
url = "http://127.0.0.1:8086"
bucket = "plants"
org = "acme"
token_file = "${{CREDENTIALS_DIRECTORY}}/influx-token"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(data=tmp_path / "data"))
    return path


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory as systemd makes it for LoadCredential=, and $CREDENTIALS_DIRECTORY."""
    directory = tmp_path / "credentials"
    directory.mkdir()
    (directory / "influx-token").write_text("t0ken-from-credstore\n")
    (directory / "mqtt-password").write_text("mqtt-pw\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory


def test_file_paths_in_the_credentials_directory(config: Path, credentials: Path) -> None:
    cfg = load_config(config)
    assert cfg.outputs[0].token is not None and cfg.mqtt.password is not None
    assert cfg.outputs[0].token.get_secret_value() == "t0ken-from-credstore"
    assert cfg.mqtt.password.get_secret_value() == "mqtt-pw"
    assert cfg.outputs[0].token_file == credentials / "influx-token"
    assert cfg.mqtt.tls.key_file == credentials / "mqtt-client-key"  # read when connecting


def test_a_credential_the_unit_did_not_load(config: Path, credentials: Path) -> None:
    (credentials / "influx-token").unlink()
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert "outputs.0" in str(err.value)
    assert f"cannot read token_file '{credentials / 'influx-token'}'" in str(err.value)


def test_outside_the_service_the_credential_stores_are_read(
    tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check-config, doctor or a run by hand (as root): each name is read from the first store
    that has it, as the unit's LoadCredential=NAME finds it."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    etc, run = tmp_path / "etc-credstore", tmp_path / "run-credstore"
    monkeypatch.setattr(config_module, "CREDSTORES", (etc, run))
    etc.mkdir()
    run.mkdir()
    (etc / "influx-token").write_text("from-etc\n")
    (run / "influx-token").write_text("from-run\n")
    (run / "mqtt-password").write_text("mqtt-from-run\n")
    cfg = load_config(config)
    assert cfg.outputs[0].token is not None and cfg.mqtt.password is not None
    assert cfg.outputs[0].token.get_secret_value() == "from-etc"
    assert cfg.mqtt.password.get_secret_value() == "mqtt-from-run"
    assert cfg.mqtt.tls.key_file == etc / "mqtt-client-key"  # in none: named where it belongs


def test_outside_the_service_a_missing_credential_is_named(
    tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setattr(config_module, "CREDSTORES", (tmp_path / "etc-credstore",))
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert f"cannot read password_file '{tmp_path / 'etc-credstore' / 'mqtt-password'}'" in str(
        err.value
    )


def test_other_paths_are_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/nowhere")
    token = tmp_path / "$CREDENTIALS_DIRECTORY" / "influx-token"  # a folder named so: no prefix
    token.parent.mkdir()
    token.write_text("plain\n")
    text = CONFIG.format(data=tmp_path / "data")
    text = text.replace("${CREDENTIALS_DIRECTORY}/influx-token", str(token))
    text = text.replace('password_file = "$CREDENTIALS_DIRECTORY/mqtt-password"', "")
    path = tmp_path / "agent.toml"
    path.write_text(text.replace('key_file = "${CREDENTIALS_DIRECTORY}/mqtt-client-key"', ""))
    cfg = load_config(path)
    assert cfg.outputs[0].token is not None
    assert cfg.outputs[0].token.get_secret_value() == "plain"


LOGGING = """
import logging, structlog
from agent import logs
from agent.redact import Redactor
logs.setup("auto", "debug", Redactor(["s3cret"]))
log = structlog.get_logger("edge_agent")
log.debug("d"); log.info("i", token="s3cret"); log.warning("w"); log.error("e")
try:
    raise ValueError("bad s3cret")
except ValueError:
    logging.getLogger("aiohttp.client").exception("library %s", "trouble")
"""


def _log_lines(tmp_path: Path, journal: bool) -> list[str]:
    """The agent's log setup run with stderr on a file, which ``journal`` makes $JOURNAL_STREAM
    name (as systemd names the journal's stream socket)."""
    stderr = tmp_path / "stderr"
    stderr.touch()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal:
        st = os.stat(stderr)
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    with stderr.open("w") as err:
        subprocess.run([sys.executable, "-c", LOGGING], stderr=err, env=env, check=True, timeout=60)
    return stderr.read_text().splitlines()


def test_journal_lines_are_json_with_their_priority(tmp_path: Path) -> None:
    """journald strips a leading <N> and keeps N as the entry's PRIORITY, so `journalctl -p
    warning` finds the warnings and `journalctl -o cat` shows the bare JSON."""
    lines = _log_lines(tmp_path, journal=True)
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<3>"]
    events = [json.loads(line[3:]) for line in lines]
    assert [e["event"] for e in events] == ["d", "i", "w", "e", "library trouble"]
    assert events[1]["token"] == "********"
    assert events[4]["logger"] == "aiohttp.client" and events[4]["level"] == "error"
    assert "ValueError: bad ********" in events[4]["exception"]
    assert "s3cret" not in "\n".join(lines)


def test_without_the_journal_lines_are_bare_json(tmp_path: Path) -> None:
    lines = _log_lines(tmp_path, journal=False)
    assert [json.loads(line)["level"] for line in lines] == [
        "debug",
        "info",
        "warning",
        "error",
        "error",
    ]
