"""The shipped example configs are valid: the agent's with check-config, the broker's with a
real mosquitto (port and paths moved under a temp dir)."""

from pathlib import Path

import pytest

from agent.config import load_config
from agent.tools.localservers import Mosquitto

ROOT = Path(__file__).resolve().parent.parent


def test_example_agent_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the unit runs it: its secrets in the credentials directory LoadCredential= fills."""
    (tmp_path / "influx-token").write_text("token\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = load_config(ROOT / "config" / "agent.toml")
    assert cfg.mqtt.subscriptions[0].topic.startswith("plant/{line}")
    assert cfg.outputs[0].token is not None


class ExampleBroker(Mosquitto):
    """The repository's mosquitto.conf, with only its listener and data path moved."""

    def _prepare(self) -> None:
        self.db_dir.mkdir(exist_ok=True)
        text = (ROOT / "config" / "mosquitto.conf").read_text()
        text = text.replace("listener 1883", f"listener {self.port} 127.0.0.1")
        text = text.replace("/var/lib/mosquitto/", f"{self.db_dir}/")
        self.conf_path.write_text(text + "log_dest stdout\n")


def test_example_broker_config_starts(tmp_path: Path) -> None:
    broker = ExampleBroker(tmp_path / "mosquitto")
    try:
        broker.start()
    except Exception as exc:  # the conf is rejected: show mosquitto's own words
        pytest.fail(f"config/mosquitto.conf does not start: {exc}")
    broker.stop()
