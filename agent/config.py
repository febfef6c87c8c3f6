"""The agent's configuration: one TOML file, overridable key by key from the environment.

Precedence (highest first): ``EDGE_<SECTION>__<KEY>`` environment variables, the TOML file,
defaults. List sections are addressed by position or by ``name``:
``EDGE_OUTPUTS__CLOUD__URL`` or ``EDGE_OUTPUTS__0__URL``. Every secret also has a ``*_file``
form, read once at load, so tokens never have to sit in the TOML or the unit file. A ``*_file``
path may start with ``${CREDENTIALS_DIRECTORY}/``: systemd's LoadCredential= puts the secrets
there, and systemd expands the variable in the unit's own lines but not in this file; outside
the unit the same files are read from /etc/credstore.
"""

from __future__ import annotations

import base64
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from agent.aggregate.windows import MAX_SERIES
from agent.parse.topic import TopicTemplate
from agent.redact import mask_url
from agent.units import ByteSize, Duration

ENV_PREFIX = "EDGE_"
CREDENTIALS = "CREDENTIALS_DIRECTORY"
# Where systemd's LoadCredential=NAME (no path) looks for NAME, in order.
CREDSTORES = (Path("/etc/credstore"), Path("/run/credstore"), Path("/usr/lib/credstore"))
_LIST_PATHS = ("OUTPUTS__", "MQTT__SUBSCRIPTIONS__", "AGGREGATIONS__")


class ConfigError(Exception):
    """A configuration problem, worded for the operator: which key, which file, what is wrong."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _in_credentials(value: object) -> object:
    """``${CREDENTIALS_DIRECTORY}/name`` (or ``$CREDENTIALS_DIRECTORY/name``) as the path the
    service manager gave this run. Outside the service (check-config, doctor, run by hand) the
    name is looked up where the unit's ``LoadCredential=name`` finds it: the credential stores
    (readable by root). Any other value is left as it is."""
    if not isinstance(value, str | Path):
        return value
    text = str(value)
    for prefix in (f"${{{CREDENTIALS}}}/", f"${CREDENTIALS}/"):
        if text.startswith(prefix):
            name = text.removeprefix(prefix)
            directory = os.environ.get(CREDENTIALS)
            if directory:
                return Path(directory) / name
            found = [store / name for store in CREDSTORES if (store / name).exists()]
            return found[0] if found else CREDSTORES[0] / name
    return value


# A file the agent reads (a secret, a key, a CA): may be a credential systemd passed in.
CredentialPath = Annotated[Path, BeforeValidator(_in_credentials)]


def _read_secret(path: Path | None, value: SecretStr | None, key: str) -> SecretStr | None:
    if path is None:
        return value
    if value is not None:
        raise ValueError(f"set either {key} or {key}_file, not both")
    try:
        return SecretStr(Path(path).read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ValueError(f"cannot read {key}_file {str(path)!r}: {exc.strerror}") from exc


def _check_url(url: str, schemes: tuple[str, ...], example: str, credentials: str) -> None:
    """URLs are quoted in logs, /readyz and error messages, so credentials are refused in them
    rather than masked wherever a URL might surface; ``credentials`` names the keys to use."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ValueError(
            f"url {mask_url(url)!r} carries credentials (user:password@): they do not belong "
            f"in a URL, which is shown in logs and status. Set {credentials} instead"
        )
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"url {mask_url(url)!r} must look like {example}")


class AgentSection(_Model):
    name: str = Field(default_factory=socket.gethostname, min_length=1)
    data_dir: Path = Path("/var/lib/edge-agent")
    tags: dict[str, str] = {}
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace: Duration = 10.0


class TLSSection(_Model):
    ca_file: CredentialPath | None = None
    cert_file: CredentialPath | None = None
    key_file: CredentialPath | None = None
    insecure: bool = False


class Subscription(_Model):
    topic: str
    format: Literal["value", "influx", "json"] = "value"
    # QoS 2 is refused: paho keeps the QoS 2 handshake state in memory, so a crash after PUBREC
    # would lose the message. QoS 1 plus timestamp-keyed upserts gives exactly-once points.
    qos: Literal[0, 1] = 1
    measurement: str = "mqtt"
    field: str = "value"
    tags: dict[str, str] = {}
    precision: Literal["ns", "us", "ms", "s"] = "ns"
    json_time_key: str = "time"
    json_tag_keys: list[str] = []
    # Publishers are untrusted: without this, the gateway's static tags (agent and subscription)
    # win over tags from topics and payloads, so no sensor can relabel its readings as another
    # plant's.
    override_tags: bool = False

    @model_validator(mode="after")
    def _template_is_valid(self) -> Subscription:
        TopicTemplate(self.topic)
        return self

    def shadowed_tags(self, static: set[str]) -> set[str]:
        """Tags this subscription captures (topic, json_tag_keys) that static tags would hide."""
        if self.override_tags:
            return set()
        return (set(TopicTemplate(self.topic).tag_names) | set(self.json_tag_keys)) & static


class MQTTSection(_Model):
    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = ""
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password: SecretStr | None = None
    password_file: CredentialPath | None = None
    tls: TLSSection = TLSSection()
    keepalive: Duration = 30.0
    session_expiry: Duration = 7 * 86400.0
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    max_payload: ByteSize = Field(default=1024 * 1024, ge=1)
    reconnect_min: Duration = 1.0
    reconnect_max: Duration = 60.0
    subscriptions: list[Subscription] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> MQTTSection:
        _check_url(
            self.url,
            ("mqtt", "mqtts"),
            "mqtt://host:1883 or mqtts://host:8883",
            "username and password_file",
        )
        object.__setattr__(
            self, "password", _read_secret(self.password_file, self.password, "password")
        )
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def use_tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"


class OutputSection(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str
    api: Literal["v1", "v2"] = "v2"
    org: str = ""
    bucket: str = ""
    token: SecretStr | None = None
    token_file: CredentialPath | None = None
    database: str = ""
    retention_policy: str = ""
    username: str | None = None
    password: SecretStr | None = None
    password_file: CredentialPath | None = None
    # Whatever order is written, the agent's telemetry goes first, then aggregates, then raw
    # readings: after an outage the fleet's view of the gateway and the dashboards' summaries
    # are current while the raw history backfills behind them. Telemetry is on by default, so
    # a fleet sees every gateway's health without configuring each one (docs/telemetry.md).
    streams: list[Literal["raw", "aggregates", "telemetry"]] = Field(
        default=["raw", "telemetry"], min_length=1
    )
    batch_size: int = Field(default=5000, ge=1)
    batch_bytes: ByteSize = 4 * 1024 * 1024
    flush_interval: Duration = 1.0
    max_in_flight: int = Field(default=4, ge=1, le=64)
    timeout: Duration = 30.0
    gzip_level: int = Field(default=3, ge=0, le=9)
    retry_max_backoff: Duration = 60.0
    retry_after_cap: Duration = 300.0
    config_error_retry: Duration = 30.0
    tls_ca_file: CredentialPath | None = None
    tls_insecure: bool = False

    @model_validator(mode="after")
    def _check(self) -> OutputSection:
        credentials = "token_file" if self.api == "v2" else "username and password_file"
        _check_url(self.url, ("http", "https"), "http://host:8086", credentials)
        object.__setattr__(self, "token", _read_secret(self.token_file, self.token, "token"))
        object.__setattr__(
            self, "password", _read_secret(self.password_file, self.password, "password")
        )
        if self.api == "v2" and not self.bucket:
            raise ValueError("api = 'v2' needs bucket (and org, token for InfluxDB 2.x/3.x)")
        if self.api == "v1" and not self.database:
            raise ValueError("api = 'v1' needs database")
        return self


class SpoolSection(_Model):
    max_size: ByteSize = 1024**3
    max_age: Duration = 7 * 86400.0
    min_free_disk: ByteSize = 256 * 1024**2
    when_full: Literal["drop_oldest", "block"] = "drop_oldest"
    synchronous: Literal["full", "normal"] = "full"
    max_commit_batch: int = Field(default=10000, ge=1)
    # How long the first message of a group commit may wait for others: each commit is an fsync
    # and a few pages written, whatever it holds. An SD card lasts longer with "1s".
    commit_interval: Duration = Field(default=0.1, le=10.0)


AggregateFunction = Literal["mean", "min", "max", "count", "sum", "first", "last", "stddev"]


class AggregationSection(_Model):
    name: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]*$")
    measurements: list[str] = Field(default=["*"], min_length=1)
    fields: list[str] = Field(default=["*"], min_length=1)
    every: Duration
    offset: Duration = 0.0
    functions: list[AggregateFunction] = Field(
        default=["mean", "min", "max", "count"], min_length=1
    )
    lateness: Duration = 10.0
    timestamp: Literal["stop", "start"] = "stop"
    suffix: str = ""
    max_series: int = Field(default=MAX_SERIES, ge=1)

    @model_validator(mode="after")
    def _check(self) -> AggregationSection:
        if self.every < 0.001:
            raise ValueError("every must be at least 1ms")
        if not 0 <= self.offset < self.every:
            raise ValueError("offset must be at least 0 and shorter than every")
        if self.lateness < 0:
            raise ValueError("lateness must not be negative")
        if len(set(self.functions)) != len(self.functions):
            raise ValueError(f"functions has duplicates: {self.functions}")
        if "\n" in self.suffix or "\r" in self.suffix:
            raise ValueError("suffix contains a line break")
        if not self.name:
            object.__setattr__(self, "name", f"every_{self.every:g}s")
        return self


class ClockSection(_Model):
    """How far the wall clock and the sensors' own timestamps are believed (agent/clock/)."""

    trust: Literal["verify", "system"] = "verify"
    max_skew: Duration = 2.0
    max_future: Duration = 300.0
    max_past: Duration = 3650 * 86400.0

    @model_validator(mode="after")
    def _check(self) -> ClockSection:
        if self.max_skew <= 0:
            raise ValueError("max_skew must be positive")
        return self


class TelemetrySection(_Model):
    """The agent's own health, written to its spool's ``telemetry`` stream (docs/telemetry.md)."""

    interval: Duration = 30.0  # 0 turns it off

    @field_validator("interval")
    @classmethod
    def _check_interval(cls, interval: float) -> float:
        if 0 < interval < 0.1:
            raise ValueError("must be 0 (off) or at least 100ms")
        return interval


class StatusSection(_Model):
    enabled: bool = True
    listen: str = "127.0.0.1:9466"

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


class _SectionEnv(EnvSettingsSource):
    """pydantic-settings' env source for the sections; list items are overlaid by ``apply_env``."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {
            k: v
            for k, v in super()._load_env_vars().items()
            if not k.upper().removeprefix(ENV_PREFIX).startswith(_LIST_PATHS)
        }


class Config(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    agent: AgentSection = AgentSection()
    mqtt: MQTTSection
    outputs: list[OutputSection] = Field(min_length=1)
    aggregations: list[AggregationSection] = []
    spool: SpoolSection = SpoolSection()
    clock: ClockSection = ClockSection()
    telemetry: TelemetrySection = TelemetrySection()
    status: StatusSection = StatusSection()

    @model_validator(mode="after")
    def _check(self) -> Config:
        names = [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"output names must be unique, got {names}")
        if "ingest" in names:  # dead-letters/<output>.jsonl would be intake's ingest.jsonl
            raise ValueError("'ingest' is reserved (intake's dead letters): name the output else")
        agg_names = [a.name for a in self.aggregations]
        if len(set(agg_names)) != len(agg_names):
            raise ValueError(f"aggregation names must be unique, got {agg_names}")
        sends_aggregates = any("aggregates" in o.streams for o in self.outputs)
        if self.aggregations and not sends_aggregates:
            raise ValueError(
                "aggregations are configured but no output has 'aggregates' in its streams"
            )
        if sends_aggregates and not self.aggregations:
            raise ValueError("an output sends the 'aggregates' stream but no [[aggregations]]")
        for sub in self.mqtt.subscriptions:
            shadowed = sub.shadowed_tags({*self.agent.tags, *sub.tags})
            if shadowed:
                raise ValueError(
                    f"subscription {sub.topic!r} captures {sorted(shadowed)}, which static tags "
                    "of the gateway also set and always win; drop the static tag, rename the "
                    "capture, or set override_tags = true to let publishers set it"
                )
        if not self.mqtt.client_id:
            object.__setattr__(
                self.mqtt,
                "client_id",
                f"edge-agent-{self.agent.name}",
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (_SectionEnv(settings_cls), init_settings)

    def secrets(self) -> list[str]:
        """Every configured secret value, for the Redactor of logs and /readyz; a v1 output's
        also as the Basic credentials it sends, which a server may quote back."""
        found = [self.mqtt.password] + [s for o in self.outputs for s in (o.token, o.password)]
        values = [s.get_secret_value() for s in found if s is not None]
        for o in self.outputs:
            if o.api == "v1" and o.username:
                password = o.password.get_secret_value() if o.password else ""
                basic = f"{o.username}:{password}".encode("latin-1", "replace")  # as aiohttp
                values.append(base64.b64encode(basic).decode())
        return values

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data, secrets shown as '********'."""
        data: dict[str, Any] = self.model_dump(mode="json")
        _mask(data)
        return data


def _mask(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("token", "password") and value is not None:
                node[key] = "********"
            else:
                _mask(value)
    elif isinstance(node, list):
        for item in node:
            _mask(item)


def _coerce_env(raw: str) -> Any:
    """Env values are strings; TOML syntax lets an override carry a number, bool, list or table."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _list_item(items: list[Any], selector: str, env_name: str) -> dict[str, Any]:
    if selector.isdigit():
        index = int(selector)
        if index >= len(items):
            raise ConfigError(f"{env_name}: there is no item {index} in the file")
        item: dict[str, Any] = items[index]
        return item
    for item in items:
        if str(item.get("name", "")).lower() == selector.lower():
            return item
    raise ConfigError(f"{env_name}: no item named {selector!r} in the file")


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``EDGE_OUTPUTS__<NAME|INDEX>__<KEY>``, aggregation and subscription items onto the
    file's data.

    pydantic-settings handles plain sections, but cannot address one item of a list by name.
    """
    for env_name, raw in sorted(environ.items()):
        path = [p.lower() for p in env_name.upper().removeprefix(ENV_PREFIX).split("__")]
        if not env_name.upper().startswith(ENV_PREFIX):
            continue
        if path[0] in ("outputs", "aggregations") and len(path) >= 3:
            node = _list_item(data.setdefault(path[0], []), path[1], env_name)
            path = path[2:]
        elif path[:2] == ["mqtt", "subscriptions"] and len(path) >= 4:
            subs = data.setdefault("mqtt", {}).setdefault("subscriptions", [])
            node = _list_item(subs, path[2], env_name)
            path = path[3:]
        else:
            continue
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = _coerce_env(raw)
    return data


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see config/agent.toml)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def load_config(path: Path) -> Config:
    """Read, overlay and validate; every problem becomes one ConfigError naming key and file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    data = apply_env(data, os.environ)
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(path))) from exc
