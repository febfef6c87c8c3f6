"""The Grafana dashboards and alert rules in deploy/grafana, against what the agent really writes.

A real agent, configured like config/agent.toml (its subscriptions and aggregation, the window
shortened), takes simulated plant readings from a real mosquitto and forwards raw lines and
aggregates to a real InfluxDB 1.x, into the databases the provisioned datasources name. Then
every variable query, every panel query and every alert query is run the way Grafana runs it:
variables resolved in order from the server's answers (All, the first value, the last value),
time macros substituted. Each must run and return rows.
"""

from __future__ import annotations

import json
import random
import re
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentproc import TEMPLATE, output_toml
from conftest import AgentFactory
from test_e2e import wait_until

from agent.tools.localservers import InfluxDB1, Mosquitto, ServerError
from agent.tools.simulate import Publisher, make_sensors

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROVISIONING = GRAFANA / "provisioning"
ALERTING = sorted((PROVISIONING / "alerting").glob("*.yaml"))
ALL = "$__all"
TELEMETRY = "edge_agent"


# --- the files ---------------------------------------------------------------------------------
def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside a collapsed row included."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def databases(directory: Path) -> dict[str, str]:
    """Datasource uid -> the database it reads, from a provisioning directory."""
    out = {}
    for path in sorted(directory.glob("*.yaml")):
        for source in yaml.safe_load(path.read_text())["datasources"]:
            out[source["uid"]] = source["jsonData"]["dbName"]
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in ALERTING
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


# --- what Grafana does to a query before it sends it -------------------------------------------
NICE_MS = [
    10, 20, 50, 100, 200, 500,
    1_000, 2_000, 5_000, 10_000, 15_000, 20_000, 30_000,
    60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000, 86_400_000,
]  # fmt: skip
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)\]\]")


@dataclass(frozen=True)
class TimeRange:
    start_ms: int
    end_ms: int

    def interval_ms(self, max_data_points: int = 1000) -> int:
        """$__interval: the range over the data points, rounded up to a round duration."""
        raw = (self.end_ms - self.start_ms) / max_data_points
        return next((nice for nice in NICE_MS if nice >= raw), NICE_MS[-1])

    def macros(self, max_data_points: int = 1000) -> dict[str, str]:
        interval = self.interval_ms(max_data_points)
        text = f"{interval // 1000}s" if interval % 1000 == 0 else f"{interval}ms"
        span = self.end_ms - self.start_ms
        time_filter = f"time >= {self.start_ms}ms and time <= {self.end_ms}ms"
        return {
            "timeFilter": time_filter,
            "__timeFilter": time_filter,
            "__interval": text,
            "interval": text,
            "__interval_ms": str(interval),
            "__from": str(self.start_ms),
            "__to": str(self.end_ms),
            "__range_ms": str(span),
            "__range_s": str(span // 1000),
            "__range": f"{span // 1000}s",
        }


@dataclass(frozen=True)
class Selection:
    variable: dict[str, Any]
    values: list[str]  # [ALL] for All

    def text(self, fmt: str | None) -> str:
        """As Grafana's InfluxDB datasource interpolates it: a multi-value or All variable is
        regex-escaped and alternated; All becomes the variable's allValue."""
        var = self.variable
        if self.values == [ALL]:
            return str(var["allValue"])
        if not (var.get("multi") or var.get("includeAll")) and fmt != "regex":
            return self.values[0]
        escaped = [regex_escape(v) for v in self.values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def regex_escape(value: str) -> str:
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", r"\\\g<0>", value)


def interpolate(text: str, selections: dict[str, Selection], macros: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        if name in macros:
            return macros[name]
        if name not in selections:
            raise KeyError(f"unknown variable ${name} in {text!r}")
        return selections[name].text(match.group(3))

    return VARIABLE.sub(sub, text)


def variable_options(answer: dict[str, Any], query: str, regex: str, sort: int) -> list[str]:
    """The options of a query variable, picked from InfluxDB's answer like Grafana does: the
    value column of SHOW TAG VALUES, the first column otherwise; filtered (and captured) by the
    variable's regex; sorted."""
    column = 1 if query.upper().startswith("SHOW TAG VALUES") else 0
    found = [
        str(row[column])
        for series in answer["results"][0].get("series", [])
        for row in series["values"]
    ]
    if regex:
        pattern = re.compile(regex[1 : regex.rindex("/")])
        kept = []
        for value in found:
            match = pattern.search(value)
            if match:
                kept.append(match.group(1) if match.groups() else value)
        found = kept
    found = list(dict.fromkeys(found))
    if sort in (1, 2):
        found.sort(reverse=sort == 2)
    return found


# How a test run picks each variable's value: like a user who leaves All, or who picks the
# first or the last option of every list; and, for "each", every option of every single-valued
# variable in turn (every measurement and field), with All elsewhere.
Choice = Callable[[dict[str, Any], list[str]], list[list[str]]]
CHOICES: dict[str, Choice] = {
    "all": lambda var, options: [[ALL] if var.get("includeAll") else options[:1]],
    "first": lambda var, options: [options[:1]],
    "last": lambda var, options: [options[-1:]],
    "each": lambda var, options: [[ALL]] if var.get("includeAll") else [[o] for o in options],
}


class Grafana:
    """Resolves a dashboard's variables against the server and runs its queries."""

    def __init__(self, influx: InfluxDB1, databases: dict[str, str], span: TimeRange) -> None:
        self.influx = influx
        self.databases = databases
        self.span = span
        self.picked: dict[str, set[str]] = {}  # variable -> the values queries ran with

    def database(self, source: dict[str, Any], selections: dict[str, Selection]) -> str:
        uid = interpolate(source["uid"], selections, {})
        assert uid in self.databases, f"datasource {uid} is not provisioned"
        return self.databases[uid]

    def resolve(self, dashboard: dict[str, Any], choice: Choice) -> list[dict[str, Selection]]:
        """The variables' selections, resolved in order; one set per branch of the choice."""
        branches: list[dict[str, Selection]] = [{}]
        for var in dashboard["templating"]["list"]:
            name = var["name"]
            grown = []
            for selections in branches:
                if var["type"] == "datasource":
                    grown.append({**selections, name: Selection(var, [var["current"]["value"]])})
                    continue
                assert var["type"] == "query", f"variable {name}: type {var['type']}"
                db = self.database(var["datasource"], selections)
                query = interpolate(var["query"], selections, self.span.macros())
                answer = self.influx.query(db, query)
                options = variable_options(answer, query, var.get("regex", ""), var.get("sort", 0))
                if not options and var.get("includeAll"):
                    grown.append({**selections, name: Selection(var, [ALL])})
                    continue
                assert options, f"variable {name}: no options from {query!r}"
                for pick in choice(var, options):
                    self.picked.setdefault(name, set()).update(pick)
                    grown.append({**selections, name: Selection(var, pick)})
            branches = grown
        return branches

    def check_dashboard(self, path: Path, choice: Choice) -> list[str]:
        """Every panel query of the dashboard: the failures, as lines of text."""
        dashboard = load(path)
        failures = []
        for selections in self.resolve(dashboard, choice):
            for panel in all_panels(dashboard):
                macros = self.span.macros(panel.get("maxDataPoints", 1000))
                for target in panel.get("targets", []):
                    db = self.database(target.get("datasource", panel["datasource"]), selections)
                    query = interpolate(target["query"], selections, macros)
                    problem = self.problem(db, query)
                    if problem:
                        picked = {k: v.values for k, v in selections.items()}
                        where = f"{path.name} {picked} {panel['title']!r}"
                        failures.append(f"{where}: {problem}\n    {query}")
        return failures

    def check_alert(self, rule: dict[str, Any]) -> list[str]:
        failures = []
        for step in rule["data"]:
            if step["datasourceUid"] == "__expr__":
                continue
            seconds = step["relativeTimeRange"]
            now = int(time.time() * 1000)
            span = TimeRange(now - seconds["from"] * 1000, now - seconds["to"] * 1000)
            query = interpolate(step["model"]["query"], {}, span.macros())
            problem = self.problem(self.databases[step["datasourceUid"]], query)
            if problem:
                failures.append(f"alert {rule['title']!r}: {problem}\n    {query}")
        return failures

    def problem(self, db: str, query: str) -> str:
        try:
            answer = self.influx.query(db, query)
        except ServerError as exc:
            return str(exc).splitlines()[0]
        if not any(s.get("values") for r in answer["results"] for s in r.get("series", [])):
            return "no rows"
        return ""


# --- the files alone ---------------------------------------------------------------------------
def test_dashboards_are_grafana_10_json_with_raw_influxql_and_regex_variables() -> None:
    assert {p.name for p in DASHBOARDS} == {"edge-fleet.json", "edge-plant.json"}
    uids = set()
    for path in DASHBOARDS:
        dashboard = load(path)
        assert dashboard["schemaVersion"] >= 38, path.name
        uids.add(dashboard["uid"])
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        sources = {n for n, v in variables.items() if v["type"] == "datasource"}
        ids = [p["id"] for p in all_panels(dashboard)]
        assert len(ids) == len(set(ids)), path.name
        for panel in all_panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"][2:-1] in sources, panel["title"]
            for target in panel["targets"]:
                assert target["rawQuery"] is True, panel["title"]
                assert "$timeFilter" in target["query"] or "now()" in target["query"]
                for name, var in variables.items():
                    if var.get("includeAll"):
                        # a tag compared to a multi-value variable must be a regex match
                        assert f"= '${name}'" not in target["query"], panel["title"]
                        assert var["allValue"] == ".*"
    assert len(uids) == len(DASHBOARDS)


def test_influxdb_1_and_2_datasources_carry_the_same_names_and_uids() -> None:
    one = databases(PROVISIONING / "datasources")
    two = databases(PROVISIONING / "datasources-influxdb2")
    assert one == two
    assert set(one) == {"edge-raw", "edge-aggregates", "edge-telemetry"}
    for path in DASHBOARDS:
        for var in load(path)["templating"]["list"]:
            if var["type"] == "datasource":
                assert var["current"]["value"] in one, (path.name, var["name"])


def test_alert_rules_use_the_telemetry_datasource_and_point_at_real_panels() -> None:
    panels = {d["uid"]: {p["id"] for p in all_panels(d)} for d in map(load, DASHBOARDS)}
    docs = (ROOT / "docs" / "dashboards.md").read_text()
    rules = alert_rules()
    assert rules
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys()
        anchor = rule["annotations"]["runbook"].rsplit("#", 1)[1]
        assert f"### {rule['title']}\n" in docs and anchor == slug(rule["title"])
        sources = {s["datasourceUid"] for s in rule["data"]} - {"__expr__"}
        assert sources == {"edge-telemetry"}, rule["title"]
        if "panelId" in rule:
            assert rule["panelId"] in panels[rule["dashboardUid"]], rule["title"]


def slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


def test_grafana_interpolation() -> None:
    multi = {"name": "line", "multi": True, "includeAll": True, "allValue": ".*"}
    single = {"name": "measurement", "multi": False}
    selections = {
        "line": Selection(multi, ["line-1", "a.b"]),
        "measurement": Selection(single, ["temperature"]),
    }
    span = TimeRange(1_000_000, 1_600_000)
    query = 'SELECT mean("${measurement}_mean") FROM /^$measurement$/ WHERE "line" =~ /^$line$/'
    assert interpolate(query + " AND $timeFilter GROUP BY time($__interval)", selections,
                       span.macros()) == (
        'SELECT mean("temperature_mean") FROM /^temperature$/ WHERE "line" =~ /^(line-1|a\\.b)$/'
        " AND time >= 1000000ms and time <= 1600000ms GROUP BY time(1s)"
    )  # fmt: skip
    assert Selection(multi, [ALL]).text(None) == ".*"
    with pytest.raises(KeyError):
        interpolate("$nope", selections, {})


# --- against the agent's own data --------------------------------------------------------------
def example_toml() -> str:
    """config/agent.toml's subscriptions after the first (which AgentProcess already has) and
    its aggregations, windows shortened so they close within the test."""
    example = tomllib.loads((ROOT / "config" / "agent.toml").read_text())
    subscriptions = example["mqtt"]["subscriptions"]
    assert subscriptions[0]["topic"] == TEMPLATE
    tables = [("mqtt.subscriptions", sub) for sub in subscriptions[1:]]
    tables += [
        ("aggregations", {**agg, "every": "2s", "lateness": "1s"})
        for agg in example["aggregations"]
    ]
    return "".join(
        f"[[{name}]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
        for name, keys in tables
    )


def publish_plant(url: str, rounds: int) -> None:
    """Simulated sensors on two lines (temperature, pressure, vibration, humidity), a PLC with
    JSON payloads, and one payload that is not JSON (a malformed reading)."""
    sensors = make_sensors("plant", lines=2, sensors=4, seed=3)
    rng = random.Random(3)
    pub = Publisher(url, "dashboards-publisher", qos=1)
    sent = 0
    for n in range(rounds):
        for sensor in sensors:
            pub.publish(sensor.topic, str(sensor.read(rng)))
            sent += 1
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        state = {"temperature": 48.0 + n, "speed": 1200 + n, "mode": "auto", "time": stamp}
        pub.publish("plant/line-1/plc/plc-1/state", json.dumps(state))
        time.sleep(0.25)
    pub.publish("plant/line-1/plc/plc-1/state", "{not json")
    assert pub.wait_acked(sent + rounds + 1, timeout=30)
    pub.close()


@pytest.mark.e2e
def test_every_query_runs_on_what_the_agent_writes(
    mosquitto: Mosquitto, influxdb: InfluxDB1, make_agent: AgentFactory
) -> None:
    dbs = databases(PROVISIONING / "datasources")
    raw, aggregates, telemetry = dbs["edge-raw"], dbs["edge-aggregates"], dbs["edge-telemetry"]
    for db in set(dbs.values()):
        influxdb.create_database(db)
    fast = {"flush_interval": "0.2s", "retry_max_backoff": "1s"}
    agent = make_agent(
        mosquitto.url,
        output_toml("cloud", influxdb.url, "v1", database=raw, streams=["raw", "telemetry"], **fast)
        + output_toml(
            "cloud-1m", influxdb.url, "v1", database=aggregates, streams=["aggregates"], **fast
        ),
        extra='[telemetry]\ninterval = "1s"\n' + example_toml(),
    )
    start = int(time.time() * 1000)
    agent.start()
    rounds = 12
    publish_plant(mosquitto.url, rounds)
    measurements = {"temperature", "pressure", "vibration", "humidity", "plc"}

    def arrived() -> bool:
        found = influxdb.query(aggregates, "SHOW MEASUREMENTS")["results"][0].get("series", [])
        names = {row[0] for s in found for row in s["values"]}
        return measurements <= names and influxdb.count(raw, "temperature") == 2 * rounds

    wait_until(arrived, 60, "raw readings and aggregates of every measurement", agent)
    wait_until(
        lambda: influxdb.count(telemetry, TELEMETRY, "uptime_seconds") >= 5, 30, "telemetry", agent
    )
    assert agent.stop() == 0

    grafana = Grafana(influxdb, dbs, TimeRange(start - 900_000, int(time.time() * 1000) + 60_000))
    failures = []
    for path in DASHBOARDS:
        for choice in CHOICES.values():
            failures += grafana.check_dashboard(path, choice)
    for rule in alert_rules():
        failures += grafana.check_alert(rule)
    assert not failures, "\n".join(failures)
    # The dashboards offered every measurement and field the agent wrote, from both formats.
    assert grafana.picked["measurement"] == measurements
    assert grafana.picked["field"] == {"value", "temperature", "speed"}
    assert grafana.picked["agent"] >= {"test"}
