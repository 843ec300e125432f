"""Station context and health: per-key state of stations, sites and users (pure, no I/O).

All state lives in a `MutableMapping[str, object]` the caller passes in (a plain
dict in training, the worker's keyed store in serving), with keys prefixed by kind:
`profile:<stationID>`, `site:<siteID>`, `user:<userID>`, `health:<stationID>`.
"""
