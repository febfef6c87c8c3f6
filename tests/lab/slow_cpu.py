"""pytest plugin for the unit tests run under qemu (tests/lab/pi.py, ``-p lab.slow_cpu``):
hypothesis without its 200 ms deadline per example, since emulated Python runs about ten times
slower than the deadline assumes. The examples and their number stay the same."""

from hypothesis import HealthCheck, settings

settings.register_profile("emulated", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("emulated")
