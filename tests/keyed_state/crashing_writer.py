"""Child process of test_crash.py: writes state, waits for its acknowledgements, says so,
changes more state without flushing it, says so, then waits to be killed.

    python tests/keyed_state/crashing_writer.py BOOTSTRAP TOPIC
"""

from __future__ import annotations

import sys
import time

from keyed_state import KeyedStateStore
from tests.keyed_state.conftest import CODEC, Acks, Tally


def main(bootstrap: str, topic: str) -> None:
    store = KeyedStateStore(bootstrap, topic, CODEC, "crashing-writer")
    store.ensure_changelog(3)
    store.restore([0, 1, 2])
    for p in range(3):
        for i in range(50):
            store.partition(p).put(f"tally:{p}-{i}", Tally(i, i / 2), 1000 * p + i)
    acks = Acks()
    acks.wait(store, store.flush(acks))
    print("acknowledged", flush=True)
    for p in range(3):
        store.partition(p).put(f"tally:{p}-0", Tally(-1, -1.0), 5000)
        store.partition(p).put(f"tally:{p}-unflushed", Tally(-1, -1.0), 5001)
    print("changed", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main(*sys.argv[1:3])
