"""The charger fleet simulator: real OCPP charge points (1.6 and 2.0.1) replaying
sessions as live transactions, with labelled live faults.

    scheduled = schedule_sessions(sessions, versions, faults)
    report = simulate(scheduled, FleetConfig(url="ws://127.0.0.1:9000/ocpp"),
                      labels_path=Path("labels.jsonl"))
"""

from fleet.run import LABEL_SCHEMA, FleetConfig, FleetError, FleetReport, run_fleet, simulate
from fleet.schedule import (
    ScheduledSession,
    assign_faults,
    assign_versions,
    replicate_stations,
    schedule_sessions,
    select_sessions,
)

__all__ = ["LABEL_SCHEMA", "FleetConfig", "FleetError", "FleetReport", "ScheduledSession",
           "assign_faults", "assign_versions", "replicate_stations", "run_fleet",
           "schedule_sessions",
           "select_sessions", "simulate"]
