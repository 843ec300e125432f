"""Live charger telemetry, pure: OCPP frames to events, live detectors, the session
hand-off, simulated charging. No network, no clock: the gateway, the processor and the
fleet simulator do the I/O (docs/telemetry.md)."""
