"""Every number the agent exports at /metrics, on a registry of its own (no process-global state,
so tests can run several agents in one interpreter)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from agent.clock import hold

# Why a point or message is given up: every label value of edge_readings_dropped.
DROP_REASONS = ("malformed", "max_size", "max_age", "min_free_disk", "dead_letter")
TELEMETRY = "telemetry"  # the spool stream of the agent's own health points


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.received = Counter(
            "edge_readings_received", "MQTT messages received", ["subscription"], registry=r
        )
        self.committed = Counter(
            "edge_readings_committed", "Points committed to the spool", ["stream"], registry=r
        )
        self.dropped = Counter(
            "edge_readings_dropped",
            f"Points or messages given up, by reason ({', '.join(DROP_REASONS)})",
            ["reason"],
            registry=r,
        )
        self.rejected = Counter(
            "edge_ingest_rejected",
            "Messages (or held readings) set aside at intake as dead letters, by reason (empty, "
            "not_utf8, bad_json, too_large, future_timestamp, clock_unplaceable, internal_error, "
            '...); all of them also count in edge_readings_dropped_total{reason="malformed"}',
            ["reason"],
            registry=r,
        )
        self.dead_letter_errors = Counter(
            "edge_dead_letter_write_errors",
            "Failed dead-letter writes (disk full, read-only): retried, the cursor or the "
            "acknowledgement waits",
            ["file"],
            registry=r,
        )
        self.telemetry_points = Counter(
            "edge_telemetry_points",
            "The agent's own health points (docs/telemetry.md), by result (written: to the "
            "spool; not_written: the spool refused them, disk or budget; dropped: by the "
            "spool's budget, not counted as readings; unplaceable: stamped by the boot clock "
            "of an earlier boot whose wall clock was never confirmed)",
            ["result"],
            registry=r,
        )
        self.clock_trusted = Gauge(
            "edge_clock_trusted",
            "1 once the wall clock is confirmed (NTP, or a server's clock); 0 while readings "
            "are held and stamped from the boot clock",
            registry=r,
        )
        self.clock_steps = Counter(
            "edge_clock_steps",
            "Wall-clock steps seen, by action (followed: NTP stepped it; distrusted: held "
            "until confirmed again)",
            ["action"],
            registry=r,
        )
        self.held_placed = Counter(
            "edge_clock_held_placed",
            "Readings held while the clock was untrusted, placed on the wall clock once trusted",
            registry=r,
        )
        self.redeliveries = Counter(
            "edge_mqtt_redeliveries_deduplicated",
            "Broker redeliveries of already-committed messages, acknowledged without storing",
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "edge_mqtt_connected", "1 while the MQTT session is up", registry=r
        )
        self.mqtt_connects = Counter(
            "edge_mqtt_connects", "MQTT connection attempts, by result", ["result"], registry=r
        )
        self.intake_blocked = Gauge(
            "edge_intake_blocked",
            "1 while intake is paused by the spool budget (when_full=block) or a disk error",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "edge_spool_commit_seconds",
            "Duration of one group commit",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.spool_lines = Gauge(
            "edge_spool_lines", "Lines held in the spool", ["stream"], registry=r
        )
        self.spool_bytes = Gauge(
            "edge_spool_bytes", "Line bytes held in the spool", ["stream"], registry=r
        )
        self.spool_budget = Gauge(
            "edge_spool_budget_bytes",
            "The spool's max_size: what edge_spool_bytes and edge_aggregate_state_bytes together "
            "may reach before when_full applies",
            registry=r,
        )
        self.spool_oldest_age = Gauge(
            "edge_spool_oldest_age_seconds",
            "Age of the oldest chunk held in the spool",
            ["stream"],
            registry=r,
        )
        self.backlog = Gauge(
            "edge_output_backlog_lines",
            "Lines an output has still to send",
            ["output", "stream"],
            registry=r,
        )
        self.lines_sent = Counter(
            "edge_output_lines_sent", "Lines accepted by the server", ["output"], registry=r
        )
        self.bytes_sent = Counter(
            "edge_output_bytes_sent",
            "Request body bytes on the wire (after gzip), every attempt",
            ["output"],
            registry=r,
        )
        self.requests = Counter(
            "edge_output_requests",
            "HTTP write requests by outcome (status code, timeout, connection_error, tls_error)",
            ["output", "outcome"],
            registry=r,
        )
        self.probes = Counter(
            "edge_output_probes",
            "GET /ping sent while the server gave no answer at all, by result (answered, none)",
            ["output", "result"],
            registry=r,
        )
        self.retries = Counter(
            "edge_output_retries", "Write attempts that will be retried", ["output"], registry=r
        )
        self.dead_letters = Counter(
            "edge_output_dead_letters",
            "Lines the server rejected for good, written to the dead-letter file",
            ["output"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "edge_output_batch_seconds",
            "Time from reading a batch to the server accepting it, retries included",
            ["output"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.last_success = Gauge(
            "edge_output_last_success_timestamp_seconds",
            "Unix time of the last accepted write",
            ["output"],
            registry=r,
        )
        self.output_healthy = Gauge(
            "edge_output_healthy",
            "0 while an output is paused on a configuration error (401/403/404)",
            ["output"],
            registry=r,
        )
        self.windows_open = Gauge(
            "edge_aggregate_windows_open",
            "Windows holding state (open, or emitted and still accepting late readings)",
            ["aggregation"],
            registry=r,
        )
        self.windows_emitted = Counter(
            "edge_aggregate_windows_emitted",
            "Windows emitted for the first time",
            ["aggregation"],
            registry=r,
        )
        self.windows_reemitted = Counter(
            "edge_aggregate_windows_reemitted",
            "Windows emitted again, corrected by late readings (same timestamp: overwritten)",
            ["aggregation"],
            registry=r,
        )
        self.aggregate_series = Gauge(
            "edge_aggregate_series",
            "Series an aggregation holds (open windows, or a clock and final mark): at most "
            "its max_series",
            ["aggregation"],
            registry=r,
        )
        self.series_evicted = Counter(
            "edge_aggregate_series_evicted",
            "Series forgotten to stay within max_series (their dirty windows emitted first)",
            ["aggregation"],
            registry=r,
        )
        self.aggregate_state_bytes = Gauge(
            "edge_aggregate_state_bytes",
            "Estimated bytes of an aggregation's checkpointed state in the spool, counted by "
            "the spool's max_size beside edge_spool_bytes",
            ["aggregation"],
            registry=r,
        )
        self.aggregate_skipped = Counter(
            "edge_aggregate_lines_skipped",
            "Raw lines the aggregator could not read (still sent raw)",
            registry=r,
        )
        self.too_late = Counter(
            "edge_aggregate_readings_too_late",
            "Readings left out of an aggregate because their window was final (still sent raw)",
            ["aggregation"],
            registry=r,
        )

    def spool_dropped(self, stream: str, reason: str, lines: int) -> None:
        """Lines the spool's budget gave up: readings count as dropped readings, the agent's
        telemetry points apart."""
        if stream == TELEMETRY or hold.target_of(stream) == TELEMETRY:
            self.telemetry_points.labels("dropped").inc(lines)
        else:
            self.dropped.labels(reason).inc(lines)
