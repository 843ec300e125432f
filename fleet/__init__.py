"""The charger fleet simulator: real OCPP charge points (1.6 and 2.0.1) replaying
sessions as live transactions, with labelled live faults."""
