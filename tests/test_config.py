"""Config: TOML, environment overrides, secrets from files, and errors that name key and file."""

from pathlib import Path

import pytest

from agent.cli import main
from agent.config import ConfigError, load_config
from agent.units import parse_duration, parse_size

BASE = """
[agent]
name = "plant-001"
data_dir = "{data}"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[[mqtt.subscriptions]]
topic = "plant/{{line}}/sensor/{{sensor}}/{{measurement}}"
[[outputs]]
name = "cloud"
url = "http://127.0.0.1:8086"
bucket = "plants"
org = "acme"
token_file = "{token}"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    token = tmp_path / "influx.token"
    token.write_text("s3cret-token\n")
    path = tmp_path / "agent.toml"
    path.write_text(BASE.format(data=tmp_path / "data", token=token))
    return path


def test_defaults_and_secret_file(config: Path) -> None:
    cfg = load_config(config)
    assert cfg.mqtt.client_id == "edge-agent-plant-001"
    assert cfg.outputs[0].token is not None
    assert cfg.outputs[0].token.get_secret_value() == "s3cret-token"
    assert cfg.spool.max_size == 1024**3 and cfg.spool.when_full == "drop_oldest"
    assert cfg.status.host_port == ("127.0.0.1", 9466)


def test_env_overrides_sections_and_list_items(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_SPOOL__MAX_SIZE", "2GiB")
    monkeypatch.setenv("EDGE_MQTT__RECEIVE_MAXIMUM", "500")
    monkeypatch.setenv("EDGE_OUTPUTS__CLOUD__BATCH_SIZE", "100")
    monkeypatch.setenv("EDGE_OUTPUTS__0__FLUSH_INTERVAL", "250ms")
    monkeypatch.setenv("EDGE_MQTT__SUBSCRIPTIONS__0__FORMAT", "json")
    cfg = load_config(config)
    assert cfg.spool.max_size == 2 * 1024**3
    assert cfg.mqtt.receive_maximum == 500
    assert cfg.outputs[0].batch_size == 100
    assert cfg.outputs[0].flush_interval == 0.25
    assert cfg.mqtt.subscriptions[0].format == "json"


def test_unknown_key_is_an_error_naming_key_and_file(config: Path) -> None:
    config.write_text(config.read_text() + "\n[spool]\nmax_sise = '1GiB'\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert "spool.max_sise" in str(err.value) and str(config) in str(err.value)


def test_unknown_env_key_is_an_error(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_SPOOL__MAX_SIS", "1")
    with pytest.raises(ConfigError, match="max_sis"):
        load_config(config)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ('[spool]\nwhen_full = "panic"\n', "spool.when_full"),
        ('[spool]\nmax_age = "soon"\n', "duration"),
        ('[status]\nlisten = "127.0.0.1:9466"\n[mqtt.tls]\nca_file = 3\n', "mqtt"),
    ],
)
def test_bad_values_are_named(config: Path, extra: str, needle: str) -> None:
    config.write_text(config.read_text() + extra)
    with pytest.raises(ConfigError, match=needle):
        load_config(config)


def test_bad_topic_template(config: Path) -> None:
    config.write_text(config.read_text().replace("{line}", "x{line}"))
    with pytest.raises(ConfigError, match=r"mqtt\.subscriptions\.0"):
        load_config(config)


def test_qos2_is_refused(config: Path) -> None:
    text = config.read_text().replace('{measurement}"\n', '{measurement}"\nqos = 2\n', 1)
    config.write_text(text)
    with pytest.raises(ConfigError, match="qos"):
        load_config(config)


def test_check_config_masks_secrets(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "s3cret-token" not in out and '"token": "********"' in out


def test_check_config_fails_on_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_units() -> None:
    assert parse_duration("1m30s") == 90 and parse_duration("500ms") == 0.5
    assert parse_duration(7) == 7 and parse_duration("7d") == 7 * 86400
    assert parse_size("1GiB") == 1024**3 and parse_size("500MB") == 500_000_000
    with pytest.raises(ValueError):
        parse_duration("1 fortnight")
    with pytest.raises(ValueError):
        parse_size("lots")


AGGREGATION = """
[[aggregations]]
name = "minute"
measurements = ["temp*"]
every = "1m"
offset = "15s"
functions = ["mean", "stddev"]
"""


def test_aggregations_and_their_stream(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = config.read_text().replace(
        'org = "acme"', 'org = "acme"\nstreams = ["aggregates", "raw"]'
    )
    config.write_text(text + AGGREGATION)
    monkeypatch.setenv("EDGE_AGGREGATIONS__MINUTE__LATENESS", '"1m"')
    cfg = load_config(config)
    agg = cfg.aggregations[0]
    assert (agg.every, agg.offset, agg.lateness, agg.timestamp) == (60.0, 15.0, 60.0, "stop")
    assert agg.functions == ["mean", "stddev"] and agg.fields == ["*"]
    assert agg.max_series == 10_000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('offset = "15s"', 'offset = "2m"'),
        ('functions = ["mean", "stddev"]', 'functions = ["median"]'),
        ('every = "1m"', 'every = "0s"'),
        ('every = "1m"', 'every = "1m"\nmax_series = 0'),
    ],
)
def test_bad_aggregation_names_the_key(config: Path, change: str, message: str) -> None:
    text = config.read_text().replace('org = "acme"', 'org = "acme"\nstreams = ["aggregates"]')
    config.write_text(text + AGGREGATION.replace(change, message))
    with pytest.raises(ConfigError, match=r"aggregations\.0"):
        load_config(config)


def test_aggregations_need_an_output_for_them_and_the_other_way_round(config: Path) -> None:
    base = config.read_text()
    config.write_text(base + AGGREGATION)
    with pytest.raises(ConfigError, match="no output has 'aggregates'"):
        load_config(config)
    config.write_text(base.replace('org = "acme"', 'org = "acme"\nstreams = ["aggregates"]'))
    with pytest.raises(ConfigError, match=r"no \[\[aggregations\]\]"):
        load_config(config)


@pytest.mark.parametrize(
    ("old", "new", "fields"),
    [
        ("mqtt://127.0.0.1", "mqtt://edge:Kx7-pl4nted@127.0.0.1", "username and password_file"),
        ("http://127.0.0.1", "https://admin:Kx7-pl4nted@127.0.0.1", "token_file"),
        ("http://127.0.0.1", "htps://admin:Kx7-pl4nted@127.0.0.1", "token_file"),
    ],
)
def test_credentials_in_a_url_are_refused_without_showing_them(
    config: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, fields: str
) -> None:
    config.write_text(config.read_text().replace(old, new))
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "carries credentials" in err and fields in err
    assert "Kx7-pl4nted" not in err and "********@127.0.0.1" in err


def test_credentials_in_an_env_url_are_refused(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_OUTPUTS__CLOUD__URL", '"http://admin:Kx7-pl4nted@127.0.0.1:8086"')
    with pytest.raises(ConfigError, match=r"outputs\.0: url 'http://\*{8}@127\.0\.0\.1:8086'"):
        load_config(config)


def test_secrets_lists_every_configured_secret(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config.write_text(
        config.read_text()
        + '[[outputs]]\nname = "v1"\nurl = "http://127.0.0.1:8087"\napi = "v1"\n'
        + 'database = "plants"\nusername = "admin"\npassword = "v1-pass"\n'
    )
    monkeypatch.setenv("EDGE_MQTT__PASSWORD", "mqtt-pass")
    cfg = load_config(config)
    # The last one is "admin:v1-pass" as HTTP Basic credentials.
    assert cfg.secrets() == ["mqtt-pass", "s3cret-token", "v1-pass", "YWRtaW46djEtcGFzcw=="]


def test_an_output_may_not_be_named_ingest(tmp_path: Path) -> None:
    """Its dead letters would mix with intake's in dead-letters/ingest.jsonl."""
    path = tmp_path / "agent.toml"
    path.write_text(
        '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n[[mqtt.subscriptions]]\ntopic = "a/{measurement}"\n'
        '[[outputs]]\nname = "ingest"\n'
        'url = "http://127.0.0.1:8086"\ndatabase = "d"\napi = "v1"\n'
    )
    with pytest.raises(ConfigError, match="reserved"):
        load_config(path)
