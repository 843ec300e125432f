"""The telemetry processor: per-connector keyed state over the telemetry topic, live
detectors, live alerts and connector status on RabbitMQ, sessions handed to scoring."""
