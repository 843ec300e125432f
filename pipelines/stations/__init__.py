"""Station context and health: per-key state of stations, sites and users (pure, no I/O).

All state lives in a `MutableMapping[str, object]` the caller passes in (a plain
dict in training, the worker's keyed store in serving), with keys prefixed by kind:
`profile:<stationID>`, `site:<siteID>`, `user:<userID>`, `health:<stationID>`.
`profiles`, `context` and `health` also run compiled (`pipelines.native`).
"""

from pathlib import Path

from pipelines import native

# the compiled build of this package's hot modules, when it matches their sources
__path__[:0] = native.search_path(__name__, Path(__file__).parent)
