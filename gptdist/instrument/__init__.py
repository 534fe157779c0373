"""Measurement: metric sinks, step timers, memory and host telemetry."""
