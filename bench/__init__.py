"""Throughput benchmark: edge-agent against a bare MQTT subscriber and a POST-per-message loop.

Run with ``python -m bench.run`` (or ``scripts/dev bench``); see bench/run.py for the method.
"""
