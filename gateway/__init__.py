"""The OCPP gateway: chargers connect here over WebSocket (standalone CSMS or proxy in
front of the operator's CSMS) and every frame becomes telemetry on Kafka."""
