"""Live detectors: faults seen in one connector's telemetry while the car is plugged in (pure).

Each connector has one small `ConnectorState` under the key `<chargePoint>:<connector>` in
the `MutableMapping` the caller passes in (a dict in tests and benchmarks, the processor's
keyed state in production; `CONNECTOR_STATE_CODEC` gives its changelog bytes, about 450
bytes). `on_event` applies one `TelemetryEvent`, in Kafka order, and returns the live alert
events it opens or closes and, at a transaction's end, the `TransactionSummary` to hand off.
`on_tick` is the timer: a charger that went silent sends nothing, so silence (and a car left
plugged in by a quiet charger) is found on the stream clock, not on a message.

The kinds (`pipelines.contracts.live_alert.KINDS`), all per connector and, except `faulted`,
only inside a transaction:
- **no_current**: Charging, offered more than `min_offered_a` (or no offer reported), yet
  current ~0 on `samples` samples in a row, after a sudden drop or with no current at all;
  a taper to zero, SuspendedEV and an offer under 6 A are not faults.
- **overcurrent**: current above the offered limit by more than IEC 61851-1's tolerance,
  max(2 A, 10 %), on `samples` samples; after the offer falls, the old one stays the limit
  for the next sample and for `follow_s` (the 5 s IEC 61851-1 gives a car to follow);
  without an offer, above the connector's own learned high quantile of current.
- **meter_frozen**: the energy register stands still while power flows, until the energy
  that should have been counted exceeds the register's own resolution (learned: the
  smallest step that ends a stall of a coarse register; a register seen advancing on every
  sample is fine-grained).
- **meter_backwards**: the register decreases.
- **overtemperature**: temperature above `max_temperature_c` on `samples` samples.
- **faulted**: a Faulted status, with its error code.
- **silent**: nothing from the connector for `silent_factor` x its own learned sample
  interval (timer), or a `disconnected` event mid-transaction.
- **never_unplugged**: plugged in `idle_hours` after it last drew power, or
  `max_connected_hours` in all.

An episode opens once and closes when its condition clears or the transaction ends. A
redelivered event (its `event_id` among the connector's last 16, a meter sample not newer
than the last one, or a transaction already ended) changes nothing; the processor also
skips events whose offset the keyed state already applied.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import NamedTuple

from pipelines.contracts.connector_status import ConnectorStatusMessage
from pipelines.contracts.live_alert import KINDS, LiveAlertMessage, live_alert_id
from pipelines.contracts.telemetry import STATUSES, TelemetryEvent
from pipelines.telemetry.handoff import TransactionSummary

NAN = math.nan
(NO_CURRENT, OVERCURRENT, METER_FROZEN, METER_BACKWARDS, OVERTEMPERATURE, FAULTED, SILENT,
 NEVER_UNPLUGGED) = range(len(KINDS))
# the kinds a transaction's end closes (a Faulted status outlives it)
_TX_BOUND = tuple(i for i in range(len(KINDS)) if i != FAULTED)
RECENT_IDS = 16  # event ids remembered per connector for de-duplication
MAX_CONNECTORS = 17  # a charger-wide `disconnected` reaches its connectors 0-16


@dataclass(frozen=True)
class LivePolicy:
    """Thresholds of the live detectors; see the module docstring for what each catches.

    Args:
        samples: consecutive telltale samples before no_current, overcurrent and
            overtemperature open. One keeps the alert within a second of the first telltale
            sample (the issue's 5 s budget; with 10 s samples, two would cost 10 s); in the
            live-fault evaluation two gave no fewer false alerts for these kinds.
        frozen_samples: the same for meter_frozen. One is enough since energy is expected
            only within a transaction and between samples with no silence between them
            (comparing across a transaction start once gave 61 false alerts in 1,781 h).
        zero_current_a, active_power_w: below both, a connector draws nothing.
        min_offered_a: no_current needs a larger offer (IEC 61851: 6 A is the least pilot).
        start_grace_s: zero current this soon after the transaction start is the car waking.
        abrupt_fraction: no_current needs the last current drawn to be at least this share
            of what was offered then (of the session's peak without an offer): a taper ends
            lower; a connector that never drew counts too.
        overcurrent_min_a, overcurrent_ratio: allowed excess over the limit, the larger.
        follow_s: after the offer falls, the old offer stays the limit this long (IEC 61851-1
            gives the car 5 s), and always for the next sample.
        learn_min_samples: charging samples before a learned current limit is used.
        quantile: the learned "maximum" current and power (a high quantile, not the max).
        frozen_power_w: power above which the register must advance.
        frozen_min_wh, frozen_resolution_factor: meter_frozen needs the expected energy to
            exceed both this and this many register steps.
        frozen_unknown_wh: the expected energy needed while the register's step is unknown.
        backwards_tolerance_wh: a smaller decrease is rounding.
        max_temperature_c, temperature_hysteresis_c: open above, close below limit - this.
        silent_factor, silent_min_s: silent after this many own sample intervals, at least.
        interval_alpha: weight of a longer gap in the learned sample interval (a shorter one
            weighs a quarter of it).
        idle_hours: never_unplugged this long after the connector last drew power.
        max_connected_hours: never_unplugged this long after the transaction started.
    """

    samples: int = 1
    frozen_samples: int = 1
    zero_current_a: float = 0.5
    active_power_w: float = 100.0
    min_offered_a: float = 6.0
    start_grace_s: float = 60.0
    abrupt_fraction: float = 0.5
    overcurrent_min_a: float = 2.0
    overcurrent_ratio: float = 0.10
    follow_s: float = 5.0
    learn_min_samples: int = 30
    quantile: float = 0.98
    frozen_power_w: float = 500.0
    frozen_min_wh: float = 10.0
    frozen_resolution_factor: float = 2.5
    frozen_unknown_wh: float = 250.0
    backwards_tolerance_wh: float = 1.0
    max_temperature_c: float = 65.0
    temperature_hysteresis_c: float = 5.0
    silent_factor: float = 2.5
    silent_min_s: float = 2.0
    interval_alpha: float = 0.3
    idle_hours: float = 24.0
    max_connected_hours: float = 48.0

    def __post_init__(self) -> None:
        if not (1 <= self.samples <= 1000 and 1 <= self.frozen_samples <= 1000):
            raise ValueError("samples and frozen_samples must be in [1, 1000]")
        if not 0 < self.quantile < 1 or not 0 < self.interval_alpha <= 1:
            raise ValueError("quantile must be in (0, 1) and interval_alpha in (0, 1]")
        if min(self.zero_current_a, self.silent_factor, self.idle_hours,
               self.max_connected_hours, self.frozen_min_wh) <= 0:
            raise ValueError("zero_current_a, silent_factor, idle_hours, max_connected_hours "
                             "and frozen_min_wh must be > 0")
        if self.idle_hours > self.max_connected_hours:
            raise ValueError("idle_hours must not exceed max_connected_hours")


DEFAULT_POLICY = LivePolicy()


@dataclass(frozen=True)
class LiveAlert:
    """One event of a live alert episode; `message()` makes the contract's body of it."""

    kind: str
    status: str  # open | closed
    charge_point_id: str
    connector_id: int
    transaction_id: str | None
    site_id: str
    first_sample_ts: float
    first_received_ts: float
    at_ts: float
    evidence: str
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def alert_id(self) -> str:
        return live_alert_id(self.charge_point_id, self.connector_id, self.kind,
                             self.first_sample_ts)

    def message(self, detected_ts: float, processor: str = "") -> LiveAlertMessage:
        return LiveAlertMessage(
            self.alert_id, self.charge_point_id, self.connector_id, self.transaction_id,
            self.site_id, self.kind, self.status, self.first_sample_ts,
            self.first_received_ts, self.at_ts, self.evidence[:1000], detected_ts,
            self.metrics, processor)


# ---- the state ------------------------------------------------------------------------
_STATUS_CODE = {name: i + 1 for i, name in enumerate(STATUSES)}  # 0 = none seen
# the float fields of a ConnectorState, stored in its `doubles` array. offer_before_drop and
# offer_drop_ts: the offer before its latest decrease, and when it fell; drawn_ratio:
# current / offer (or / peak) at the last sample that drew; resolution_wh: the register's
# step (inf = not known yet, 0 = fine-grained)
_DOUBLES = ("last_ts", "last_rx", "meter_ts", "meter_rx", "status_ts", "interval_s",
            "tx_start_ts", "tx_start_rx", "tx_start_wh", "energy_wh", "power_w", "current_a",
            "offered_a", "offer_before_drop", "offer_drop_ts", "temperature_c", "active_ts",
            "peak_current_a", "drawn_ratio", "frozen_wh", "resolution_wh", "q_current_a",
            "q_power_w", "kwh_requested", "minutes_available", "departure_ts")
_N = len(KINDS)
# the `doubles` array: first_ts and first_rx per kind (0 = none), then `_DOUBLES`, whose
# values before anything is seen are NaN (not seen), except these
_DOUBLE_DEFAULTS = (0.0,) * (2 * _N) + tuple(
    {"peak_current_a": 0.0, "drawn_ratio": 0.0, "frozen_wh": 0.0, "resolution_wh": math.inf,
     "q_current_a": 0.0, "q_power_w": 0.0}.get(name, NAN) for name in _DOUBLES)
# where each float field sits in `doubles`: the hot paths index the array directly (a
# property call per field read costs more than the detector's arithmetic)
_AT = {name: 2 * _N + i for i, name in enumerate(_DOUBLES)}
(LAST_TS, LAST_RX, METER_TS, METER_RX, STATUS_TS, INTERVAL_S, TX_START_TS, TX_START_WH,
 ENERGY_WH, POWER_W, CURRENT_A, OFFERED_A, OFFER_BEFORE_DROP, OFFER_DROP_TS, TEMPERATURE_C,
 ACTIVE_TS, PEAK_CURRENT_A, DRAWN_RATIO, FROZEN_WH, RESOLUTION_WH, Q_CURRENT_A,
 Q_POWER_W) = (_AT[name] for name in (
    "last_ts", "last_rx", "meter_ts", "meter_rx", "status_ts", "interval_s", "tx_start_ts",
    "tx_start_wh", "energy_wh", "power_w", "current_a", "offered_a", "offer_before_drop",
    "offer_drop_ts", "temperature_c", "active_ts", "peak_current_a", "drawn_ratio",
    "frozen_wh", "resolution_wh", "q_current_a", "q_power_w"))
# the changelog record: the fixed fields, then the arrays' items, all little-endian
_HEAD = struct.Struct(f"<HHHHHBBHHII{_N}H{RECENT_IDS}I{_N * 2}d{len(_DOUBLES)}d")
_FIXED = struct.Struct("<HHHHHBBHHII")
# the arrays' own bytes are that layout on a little-endian machine with 2- and 4-byte ints
_ARRAYS_AS_RECORD = (sys.byteorder == "little" and array("H").itemsize == 2
                     and array("I").itemsize == 4)


@dataclass(slots=True, eq=False)
class ConnectorState:
    """What the detectors know of one connector; `to_bytes` is its changelog record.

    Times are epoch seconds: `*_ts` the charger's clock, `*_rx` the gateway's. NaN = not
    seen. `streaks[k]` counts telltale samples of kind k in a row; `first_ts[k]` and
    `first_rx[k]` date the first of them (and name the episode while it is open).
    """

    charge_point_id: str
    connector_id: int
    site_id: str = ""
    transaction_id: str = ""  # "" = no transaction
    status: str = ""  # "" = none seen
    error_code: str = ""
    user_id: str = ""
    open_bits: int = 0
    charging_samples: int = 0
    last_ended_tx: int = 0  # crc32 of the last ended transaction id
    recent_at: int = 0
    # arrays, not lists: a third of the memory per connector
    streaks: array = field(default_factory=lambda: array("H", bytes(2 * _N)))
    recent: array = field(default_factory=lambda: array("I", bytes(4 * RECENT_IDS)))
    advances: int = 0  # register advances in a row while its resolution is unknown
    # first_ts, first_rx and the float fields of `_DOUBLES` (properties below) in one array:
    # a Python float in a slot costs 24 bytes more than its 8, an array 64 bytes more than
    # its items (the 1 KB per connector in memory)
    doubles: array = field(default_factory=lambda: array("d", _DOUBLE_DEFAULTS))

    def is_open(self, kind: int) -> bool:
        return bool(self.open_bits >> kind & 1)

    @property
    def open_kinds(self) -> tuple[str, ...]:
        return tuple(KINDS[k] for k in range(_N) if self.open_bits >> k & 1)

    def to_bytes(self) -> bytes:
        cp, site, tx, error, user = texts = (self.charge_point_id, self.site_id,
                                             self.transaction_id, self.error_code, self.user_id)
        text = "".join(texts).encode()
        if len(text) != len(cp) + len(site) + len(tx) + len(error) + len(user):
            # not all ASCII: the lengths in bytes differ from those in characters
            cp, site, tx, error, user = (t.encode() for t in texts)
            text = b"".join((cp, site, tx, error, user))
        fixed = (len(cp), len(site), len(tx), len(error), len(user),
                 _STATUS_CODE.get(self.status, 0), self.open_bits, self.connector_id & 0xFFFF,
                 min(self.advances, 65535), self.charging_samples & 0xFFFFFFFF,
                 self.last_ended_tx)
        if _ARRAYS_AS_RECORD:  # the same bytes as _HEAD.pack, without 66 Python numbers
            return b"".join((_FIXED.pack(*fixed), self.streaks.tobytes(), self.recent.tobytes(),
                             self.doubles.tobytes(), text, bytes((self.recent_at,))))
        head = _HEAD.pack(*fixed, *self.streaks, *self.recent, *self.doubles)
        return b"".join((head, text, bytes((self.recent_at,))))

    @classmethod
    def from_bytes(cls, data: bytes) -> ConnectorState:
        values = _HEAD.unpack_from(data)
        lengths, status, open_bits, connector = values[:5], values[5], values[6], values[7]
        at = _HEAD.size
        texts = []
        for n in lengths:
            texts.append(data[at:at + n].decode())
            at += n
        state = cls(texts[0], connector, texts[1], texts[2],
                    STATUSES[status - 1] if status else "", texts[3], texts[4], open_bits,
                    values[9], values[10], data[at])
        state.advances = values[8]
        i = 11
        state.streaks = array("H", values[i:i + _N])
        i += _N
        state.recent = array("I", values[i:i + RECENT_IDS])
        i += RECENT_IDS
        state.doubles = array("d", values[i:])
        return state


def _double_field(index: int) -> property:
    def get(self: ConnectorState) -> float:
        return self.doubles[index]

    def put(self: ConnectorState, value: float) -> None:
        self.doubles[index] = value

    return property(get, put)


for _index, _name in enumerate(_DOUBLES):
    setattr(ConnectorState, _name, _double_field(2 * _N + _index))
# views of the first 2 x _N doubles, indexed by kind (only on telltale samples and alerts)
ConnectorState.first_ts = property(lambda self: memoryview(self.doubles)[:_N])
ConnectorState.first_rx = property(lambda self: memoryview(self.doubles)[_N:2 * _N])


class ConnectorStateCodec:
    """A `keyed_state.Codec`: every key of the telemetry state holds a `ConnectorState`."""

    def encode(self, key: str, value: object) -> bytes:
        return value.to_bytes()

    def decode(self, key: str, data: bytes) -> object:
        return ConnectorState.from_bytes(data)


CONNECTOR_STATE_CODEC = ConnectorStateCodec()


def connector_key(charge_point_id: str, connector_id: int) -> str:
    """`<chargePoint>:<connector>`, the state key (and nothing else is stored)."""
    return f"{charge_point_id}:{connector_id}"


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


# ---- results ----------------------------------------------------------------------------
class EventResult(NamedTuple):
    """What one event did.

    Attributes:
        applied: False for a redelivered event (nothing changed).
        alerts: live alert events opened or closed.
        changed: keys whose connector changed state (status, transaction, alerts): the
            processor publishes their status at once.
        summary: the finished transaction to hand off, at its end.
    """

    applied: bool
    alerts: list[LiveAlert]
    changed: tuple[str, ...]
    summary: TransactionSummary | None = None


DUPLICATE = EventResult(False, [], ())
APPLIED = EventResult(True, [], ())  # the usual sample's result: applied, nothing to tell


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _lasting(seconds: float) -> str:
    """The evidence's duration (` for 20 s`); empty on a condition's first sample."""
    return f" for {_duration(seconds)}" if seconds >= 0.5 else ""


def _alert(conn: ConnectorState, kind: int, status: str, at_ts: float, evidence: str,
           metrics: dict[str, float]) -> LiveAlert:
    first = conn.first_ts[kind]
    return LiveAlert(KINDS[kind], status, conn.charge_point_id, conn.connector_id,
                     conn.transaction_id or None, conn.site_id, first, conn.first_rx[kind],
                     max(at_ts, first), evidence, metrics)


def _open(conn: ConnectorState, kind: int, at_ts: float, evidence: str,
          metrics: dict[str, float]) -> LiveAlert:
    conn.open_bits |= 1 << kind
    return _alert(conn, kind, "open", at_ts, evidence, metrics)


def _close(conn: ConnectorState, kind: int, at_ts: float, evidence: str,
           metrics: dict[str, float] | None = None) -> LiveAlert:
    conn.open_bits &= ~(1 << kind)
    conn.streaks[kind] = 0
    return _alert(conn, kind, "closed", at_ts, evidence, metrics or {})


def _telltale(conn: ConnectorState, kind: int, ts: float, rx: float) -> int:
    """Count one more telltale sample of `kind`; the first of a run dates the episode."""
    if conn.streaks[kind] == 0 and not conn.open_bits >> kind & 1:
        conn.first_ts[kind] = ts
        conn.first_rx[kind] = rx
    streak = conn.streaks[kind] = min(conn.streaks[kind] + 1, 65535)
    return streak


def _quantile_step(q: float, x: float, p: float, n: int) -> float:
    """One step of a streaming quantile estimate (moves by a few % of its own size)."""
    if n == 0:
        return x
    step = max(abs(q) * 0.02, 0.05)
    return q + step * p if x > q else q - step * (1.0 - p)


# ---- transactions ------------------------------------------------------------------------
def _number(details: Mapping, *names: str) -> float:
    for name in names:
        value = details.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value):
            return float(value)
    return NAN


def _start_transaction(conn: ConnectorState, tx: str, event: TelemetryEvent, ts: float,
                       rx: float, alerts: list[LiveAlert]) -> None:
    if conn.transaction_id:  # the last one ended without telling: its episodes end here
        _close_transaction_alerts(conn, ts, f"transaction {conn.transaction_id} replaced by {tx}",
                                  alerts)
    details = event.details
    conn.transaction_id = tx
    conn.tx_start_ts, conn.tx_start_rx = ts, rx
    conn.tx_start_wh = event.measurands.get("energy_wh", NAN)
    conn.active_ts = NAN
    conn.peak_current_a = conn.drawn_ratio = conn.frozen_wh = 0.0
    for kind in _TX_BOUND:
        conn.streaks[kind] = 0
    conn.kwh_requested = _number(details, "kWhRequested", "energy_requested_kwh")
    if math.isnan(conn.kwh_requested):
        wh = _number(details, "energy_requested_wh")
        conn.kwh_requested = wh / 1000.0
    conn.minutes_available = _number(details, "minutesAvailable")
    conn.departure_ts = _number(details, "departure_ts", "requestedDeparture")
    user = details.get("userID") or details.get("id_token_hash") or details.get("idTokenHash")
    conn.user_id = str(user)[:32] if user else ""


def _close_transaction_alerts(conn: ConnectorState, ts: float, why: str,
                              alerts: list[LiveAlert]) -> None:
    for kind in _TX_BOUND:
        if conn.open_bits >> kind & 1:
            alerts.append(_close(conn, kind, ts, why))
        conn.streaks[kind] = 0


def _end_transaction(conn: ConnectorState, event: TelemetryEvent, ts: float,
                     alerts: list[LiveAlert]) -> TransactionSummary | None:
    tx = conn.transaction_id
    end_wh = event.measurands.get("energy_wh", conn.energy_wh)
    summary = TransactionSummary(
        conn.charge_point_id, conn.connector_id, tx, conn.site_id, conn.tx_start_ts, ts,
        conn.active_ts, conn.tx_start_wh, end_wh, conn.kwh_requested, conn.minutes_available,
        conn.departure_ts, conn.user_id, str(event.details.get("stop_reason", ""))[:64])
    _close_transaction_alerts(conn, ts, f"transaction {tx} ended", alerts)
    conn.last_ended_tx = _crc(tx)
    conn.transaction_id = ""
    if not math.isnan(end_wh):
        conn.energy_wh = end_wh
    conn.frozen_wh = 0.0
    return summary


# ---- meter samples -------------------------------------------------------------------------
def _offered(m: Mapping[str, float]) -> float:
    offered = m.get("current_offered_a")
    if offered is not None:
        return offered
    power, voltage = m.get("power_offered_w"), m.get("voltage_v")
    if power is not None and voltage:
        return power / voltage
    return NAN


def _on_meter(conn: ConnectorState, m: Mapping[str, float], ts: float, rx: float,
              policy: LivePolicy, alerts: list[LiveAlert]) -> None:
    d = conn.doubles
    current = m.get("current_a", NAN)
    power = m.get("power_w", NAN)
    voltage = m.get("voltage_v", NAN)
    if math.isnan(power) and not math.isnan(current) and voltage > 0:
        power = current * voltage
    offered = m.get("current_offered_a")
    if offered is None:
        offered = _offered(m)
    energy = m.get("energy_wh", NAN)
    temperature = m.get("temperature_c", NAN)
    dt = ts - d[METER_TS]  # NaN on the first sample
    gap = rx - d[METER_RX]
    if gap > 0:  # the connector's own sample interval, on the gateway's clock
        interval = d[INTERVAL_S]
        if math.isnan(interval):
            d[INTERVAL_S] = gap
        elif gap < 5 * interval:  # longer gaps are silences, not the cadence
            # up fast, down slowly: the estimate sits near the longer of the usual gaps, so
            # network jitter does not look like silence
            alpha = policy.interval_alpha if gap > interval else policy.interval_alpha / 4
            d[INTERVAL_S] = interval + alpha * (gap - interval)
    drawing = current >= policy.zero_current_a or power >= policy.active_power_w
    if drawing:
        d[ACTIVE_TS] = ts
    _no_current(conn, current, power, offered, ts, rx, policy, alerts)
    over = _overcurrent(conn, current, offered, ts, rx, policy, alerts)
    if not math.isnan(energy) and dt > 0:
        # energy is expected only over a stretch inside this transaction with no silence in
        # it: across a start or a gap nobody knows what was drawn (the silence is judged on
        # the gateway's clock, like the `silent` detector's)
        expect = d[METER_TS] >= d[TX_START_TS] and not gap > silence_limit(conn, policy)
        _register(conn, energy, power, dt, expect, ts, rx, policy, alerts)
    if not math.isnan(temperature):
        _temperature(conn, temperature, ts, rx, policy, alerts)
    if drawing and not over:  # learn the connector's usual maximum from healthy samples
        n = conn.charging_samples
        if not math.isnan(current):
            d[Q_CURRENT_A] = _quantile_step(d[Q_CURRENT_A], current, policy.quantile, n)
            peak = d[PEAK_CURRENT_A] = max(d[PEAK_CURRENT_A], current)
            d[DRAWN_RATIO] = current / (offered if offered > 0 else peak)
        if not math.isnan(power):
            d[Q_POWER_W] = _quantile_step(d[Q_POWER_W], power, policy.quantile, n)
        conn.charging_samples = n + 1
    d[METER_TS] = ts
    d[METER_RX] = rx
    if not math.isnan(energy):
        d[ENERGY_WH] = energy
    d[POWER_W] = power
    d[CURRENT_A] = current
    d[OFFERED_A] = offered
    if not math.isnan(temperature):
        d[TEMPERATURE_C] = temperature


def _no_current(conn: ConnectorState, current: float, power: float, offered: float,
                ts: float, rx: float, policy: LivePolicy, alerts: list[LiveAlert]) -> None:
    status = conn.status
    if math.isnan(offered):  # 1.6 chargers may not report Current.Offered
        offer_ok = status == "Charging"
    else:
        offer_ok = offered >= policy.min_offered_a and status in ("Charging", "Occupied", "")
    d = conn.doubles
    telltale = (offer_ok and current < policy.zero_current_a
                and not power >= policy.active_power_w
                and ts - d[TX_START_TS] >= policy.start_grace_s
                and (d[DRAWN_RATIO] >= policy.abrupt_fraction
                     or d[PEAK_CURRENT_A] < policy.zero_current_a))
    is_open = conn.open_bits & 1
    if telltale:
        if _telltale(conn, NO_CURRENT, ts, rx) >= policy.samples and not is_open:
            seconds = ts - conn.first_ts[NO_CURRENT]
            offer = (f"offered {offered:.0f} A" if not math.isnan(offered)
                     else "no offered limit reported")
            where = status or "in a transaction"
            alerts.append(_open(conn, NO_CURRENT, ts, (
                f"current {current:.1f} A{_lasting(seconds)} while {where}, {offer}"),
                {"current_a": current, "current_offered_a": offered, "seconds": seconds,
                 "peak_current_a": d[PEAK_CURRENT_A]}))
        return
    conn.streaks[NO_CURRENT] = 0
    if is_open:
        why = (f"current back to {current:.1f} A" if current >= policy.zero_current_a
               else f"no longer drawing by design ({status or 'no status'}, offered "
                    f"{offered:.0f} A)")
        alerts.append(_close(conn, NO_CURRENT, ts, why, {"current_a": current}))


def _overcurrent(conn: ConnectorState, current: float, offered: float, ts: float, rx: float,
                 policy: LivePolicy, alerts: list[LiveAlert]) -> bool:
    if math.isnan(current):
        return False
    d = conn.doubles
    if not math.isnan(offered):
        previous = d[OFFERED_A]
        if offered < previous:  # a lowered offer: the car has `follow_s` to follow it
            recent = ts - d[OFFER_DROP_TS] <= policy.follow_s
            d[OFFER_BEFORE_DROP] = max(previous, d[OFFER_BEFORE_DROP]) if recent else previous
            d[OFFER_DROP_TS] = ts
        limit = offered if math.isnan(previous) else max(offered, previous)
        if ts - d[OFFER_DROP_TS] <= policy.follow_s:
            limit = max(limit, d[OFFER_BEFORE_DROP])
        source = "offered"
    elif conn.charging_samples >= policy.learn_min_samples and d[Q_CURRENT_A] > 0:
        limit, source = d[Q_CURRENT_A], "usual maximum"
    else:
        return False
    margin = max(policy.overcurrent_min_a, policy.overcurrent_ratio * limit)
    is_open = conn.open_bits >> OVERCURRENT & 1
    if current > limit + margin:
        if _telltale(conn, OVERCURRENT, ts, rx) >= policy.samples and not is_open:
            seconds = ts - conn.first_ts[OVERCURRENT]
            alerts.append(_open(conn, OVERCURRENT, ts, (
                f"current {current:.1f} A{_lasting(seconds)}, above the {source} "
                f"{limit:.0f} A by {current - limit:.1f} A (tolerance {margin:.1f} A)"),
                {"current_a": current, "limit_a": limit, "seconds": seconds}))
        return True
    conn.streaks[OVERCURRENT] = 0
    if is_open:
        alerts.append(_close(conn, OVERCURRENT, ts, f"current back to {current:.1f} A "
                             f"(limit {limit:.0f} A)", {"current_a": current}))
    return False


def _register(conn: ConnectorState, energy: float, power: float, dt: float, expect: bool,
              ts: float, rx: float, policy: LivePolicy, alerts: list[LiveAlert]) -> None:
    d = conn.doubles
    last = d[ENERGY_WH]
    if math.isnan(last):
        return
    step = energy - last
    if step < -policy.backwards_tolerance_wh:
        if not conn.open_bits >> METER_BACKWARDS & 1:
            _telltale(conn, METER_BACKWARDS, ts, rx)
            alerts.append(_open(conn, METER_BACKWARDS, ts, (
                f"energy register went back {-step:.0f} Wh, from {last / 1000:.3f} to "
                f"{energy / 1000:.3f} kWh"), {"energy_wh": energy, "previous_wh": last,
                                               "step_wh": step}))
        d[FROZEN_WH] = 0.0
        conn.streaks[METER_FROZEN] = 0
        return
    if step > 1e-3:
        resolution = d[RESOLUTION_WH]
        if conn.streaks[METER_FROZEN]:  # a stall under power ended: a coarse register's step
            d[RESOLUTION_WH] = step if resolution == 0 else min(resolution, step)
        elif resolution == math.inf:
            conn.advances += 1
            if conn.advances >= 3:
                d[RESOLUTION_WH] = 0.0
        d[FROZEN_WH] = 0.0
        conn.streaks[METER_FROZEN] = 0
        if conn.open_bits >> METER_FROZEN & 1:
            alerts.append(_close(conn, METER_FROZEN, ts, f"energy register advances again "
                                 f"(+{step:.0f} Wh)", {"step_wh": step}))
        return
    if not expect:
        return
    # the lower of the two powers: a car that stopped drawing between the samples may
    # rightly leave the register where it was
    previous_power = d[POWER_W]
    flowing = power if math.isnan(previous_power) else min(power, previous_power)
    if not flowing >= policy.frozen_power_w:  # no power, no expectation (NaN included)
        if not conn.open_bits >> METER_FROZEN & 1:
            d[FROZEN_WH] = 0.0
            conn.streaks[METER_FROZEN] = 0
        return
    d[FROZEN_WH] += flowing * dt / 3600.0
    streak = _telltale(conn, METER_FROZEN, ts, rx)
    resolution = d[RESOLUTION_WH]
    needed = (max(policy.frozen_min_wh, policy.frozen_resolution_factor * resolution)
              if math.isfinite(resolution) else policy.frozen_unknown_wh)
    uncounted = d[FROZEN_WH]
    if streak >= policy.frozen_samples and uncounted >= needed \
            and not conn.open_bits >> METER_FROZEN & 1:
        seconds = ts - conn.first_ts[METER_FROZEN]
        alerts.append(_open(conn, METER_FROZEN, ts, (
            f"energy register stuck at {energy / 1000:.3f} kWh for {_duration(seconds)} while "
            f"drawing {flowing / 1000:.1f} kW ({uncounted:.0f} Wh not counted)"),
            {"energy_wh": energy, "power_w": flowing, "uncounted_wh": uncounted,
             "seconds": seconds}))


def _temperature(conn: ConnectorState, temperature: float, ts: float, rx: float,
                 policy: LivePolicy, alerts: list[LiveAlert]) -> None:
    limit = policy.max_temperature_c
    is_open = conn.open_bits >> OVERTEMPERATURE & 1
    if temperature > limit:
        if _telltale(conn, OVERTEMPERATURE, ts, rx) >= policy.samples and not is_open:
            seconds = ts - conn.first_ts[OVERTEMPERATURE]
            alerts.append(_open(conn, OVERTEMPERATURE, ts, (
                f"temperature {temperature:.1f} °C{_lasting(seconds)}, above the "
                f"{limit:.0f} °C limit"), {"temperature_c": temperature, "limit_c": limit,
                                           "seconds": seconds}))
        return
    conn.streaks[OVERTEMPERATURE] = 0
    if is_open and temperature < limit - policy.temperature_hysteresis_c:
        alerts.append(_close(conn, OVERTEMPERATURE, ts, f"temperature down to "
                             f"{temperature:.1f} °C", {"temperature_c": temperature}))


def _unplugged(conn: ConnectorState, ts: float, rx: float, policy: LivePolicy,
               alerts: list[LiveAlert]) -> None:
    """never_unplugged: checked on every event of a transaction and by the timer."""
    if conn.open_bits >> NEVER_UNPLUGGED & 1 or not conn.transaction_id:
        return
    d = conn.doubles
    connected_h = (ts - d[TX_START_TS]) / 3600.0
    active = d[ACTIVE_TS]
    idle_h = (ts - active) / 3600.0 if not math.isnan(active) else connected_h
    if connected_h > policy.max_connected_hours:
        why = (f"plugged in for {connected_h:.1f} h, longer than the "
               f"{policy.max_connected_hours:g} h any plausible session takes")
    elif idle_h > policy.idle_hours and not (d[CURRENT_A] >= policy.zero_current_a
                                             or d[POWER_W] >= policy.active_power_w):
        why = (f"still plugged in {idle_h:.1f} h after it last drew power "
               f"(connected {connected_h:.1f} h)")
    else:
        return
    _telltale(conn, NEVER_UNPLUGGED, ts, rx)
    alerts.append(_open(conn, NEVER_UNPLUGGED, ts, why, {"connected_hours": connected_h,
                                                          "idle_hours": idle_h}))


# ---- events ------------------------------------------------------------------------------
def _on_status(conn: ConnectorState, event: TelemetryEvent, ts: float, rx: float,
               alerts: list[LiveAlert]) -> bool:
    new, old, old_error = event.status or "", conn.status, conn.error_code
    conn.status, conn.error_code, conn.status_ts = new, event.error_code, ts
    if new == "Faulted":
        if not conn.open_bits >> FAULTED & 1:
            _telltale(conn, FAULTED, ts, rx)
            info = event.details.get("info") or event.details.get("vendorErrorCode") or ""
            alerts.append(_open(conn, FAULTED, ts, (
                f"connector Faulted, error code {event.error_code or 'none given'}"
                + (f" ({str(info)[:200]})" if info else "")),
                {"connector_id": float(conn.connector_id)}))
    elif conn.open_bits >> FAULTED & 1:
        alerts.append(_close(conn, FAULTED, ts, f"connector {new} again after "
                             f"{_duration(ts - conn.first_ts[FAULTED])}"))
    if conn.open_bits & 1 and new != "Charging":
        alerts.append(_close(conn, NO_CURRENT, ts, f"connector {new}: not charging by design"))
    return new != old or event.error_code != old_error


def _on_disconnected(state: MutableMapping[str, object], event: TelemetryEvent, ts: float,
                     rx: float, alerts: list[LiveAlert]) -> tuple[str, ...]:
    changed = []
    for connector in sorted({*range(MAX_CONNECTORS), event.connector_id}):
        key = connector_key(event.charge_point_id, connector)
        conn = state.get(key)
        if conn is None or not conn.transaction_id or conn.open_bits >> SILENT & 1:
            continue
        _telltale(conn, SILENT, ts, rx)
        quiet = rx - conn.last_rx
        alerts.append(_open(conn, SILENT, ts, (
            f"charger disconnected mid-transaction {conn.transaction_id} (last message "
            f"{'unknown' if math.isnan(quiet) else _duration(quiet)} before)"),
            {"seconds_quiet": quiet}))
        state[key] = conn
        changed.append(key)
    return tuple(changed)


def _key_of_transaction(state: Mapping[str, object], charge_point_id: str,
                        transaction_id: str) -> str | None:
    """The connector running this transaction. A 1.6 StopTransaction names no connector, and
    after a reconnect the gateway no longer knows it, so the event arrives on connector 0."""
    for connector in range(1, MAX_CONNECTORS):
        key = connector_key(charge_point_id, connector)
        conn = state.get(key)
        if conn is not None and conn.transaction_id == transaction_id:
            return key
    return None


def _stale(conn: ConnectorState, event: TelemetryEvent, tx: str | None, ts: float) -> bool:
    """A redelivered or late event that would change nothing true (or count twice); `ts` is
    its `event_ts`."""
    kind = event.kind
    if kind == "meter":
        return ts <= conn.doubles[METER_TS] or bool(tx) and tx != conn.transaction_id \
            and _crc(tx) == conn.last_ended_tx
    if kind == "status":
        status_ts = conn.doubles[STATUS_TS]
        return ts < status_ts or ts == status_ts and event.status == conn.status
    if kind == "transaction_started":
        return not tx or tx == conn.transaction_id or _crc(tx) == conn.last_ended_tx
    if kind == "transaction_ended":
        return not conn.transaction_id or bool(tx) and tx != conn.transaction_id
    return False


def on_event(state: MutableMapping[str, object], event: TelemetryEvent,
             policy: LivePolicy = DEFAULT_POLICY) -> EventResult:
    """Apply one telemetry event to its connector's state, in Kafka order.

    Args:
        state: the keyed state; `<chargePoint>:<connector>` is read and written (a
            charger-wide `disconnected` writes each of its connectors in a transaction).
        event: the event.
        policy: the thresholds.

    Returns:
        What it did; `DUPLICATE` (nothing changed) for a redelivered or stale event: an
        `event_id` seen lately, a meter sample not newer than the last, a status older than
        the last, a transaction start or end already applied.
    """
    key = connector_key(event.charge_point_id, event.connector_id)
    if event.connector_id == 0 and event.transaction_id:
        key = _key_of_transaction(state, event.charge_point_id, event.transaction_id) or key
    conn = state.get(key)
    if conn is None:
        conn = ConnectorState(event.charge_point_id, event.connector_id, event.site_id)
    tx = event.transaction_id
    kind = event.kind
    if kind == "meter" and not tx:  # 1.6 may leave a transaction's samples unlabelled
        tx = conn.transaction_id or None
    rx = event.received_ts
    ts = event.charger_ts
    if ts is None:  # event.event_ts, without the property call
        ts = rx
    digest = _crc(event.event_id)
    if digest in conn.recent or _stale(conn, event, tx, ts):
        return DUPLICATE
    conn.recent[conn.recent_at] = digest
    conn.recent_at = (conn.recent_at + 1) % RECENT_IDS
    alerts: list[LiveAlert] = []
    changed: tuple[str, ...] = ()
    summary = None
    if event.site_id:
        conn.site_id = event.site_id
    if conn.open_bits >> SILENT & 1 and kind != "disconnected":
        alerts.append(_close(conn, SILENT, ts, f"messages again after "
                             f"{_duration(rx - conn.first_rx[SILENT])}"))
        changed = (key,)
    if kind == "meter":
        if tx and tx != conn.transaction_id:  # a transaction whose start was missed
            _start_transaction(conn, tx, event, ts, rx, alerts)
            changed = (key,)
        d = conn.doubles
        if tx and math.isnan(d[TX_START_WH]):  # 2.0.1 sends the start register apart
            d[TX_START_WH] = event.measurands.get("energy_wh", NAN)
        if tx:
            _on_meter(conn, event.measurands, ts, rx, policy, alerts)
            _unplugged(conn, ts, rx, policy, alerts)
        else:  # outside a transaction only the readings are kept, for the live view
            m = event.measurands
            d[ENERGY_WH] = m.get("energy_wh", d[ENERGY_WH])
            d[TEMPERATURE_C] = m.get("temperature_c", d[TEMPERATURE_C])
            d[METER_TS] = ts
            d[METER_RX] = rx
    elif kind == "status":
        if _on_status(conn, event, ts, rx, alerts):
            changed = (key,)
        _unplugged(conn, ts, rx, policy, alerts)
    elif kind == "transaction_started":
        _start_transaction(conn, tx, event, ts, rx, alerts)
        changed = (key,)
    elif kind == "transaction_ended":
        summary = _end_transaction(conn, event, ts, alerts)
        changed = (key,)
    elif kind == "disconnected":
        changed = _on_disconnected(state, event, ts, rx, alerts)
    if alerts and key not in changed:
        changed = (*changed, key)
    d = conn.doubles
    if not ts <= d[LAST_TS]:
        d[LAST_TS] = ts
    d[LAST_RX] = rx
    state[key] = conn
    if not alerts and not changed and summary is None:
        return APPLIED
    return EventResult(True, alerts, changed, summary)


def silence_limit(conn: ConnectorState, policy: LivePolicy = DEFAULT_POLICY) -> float:
    """Seconds without a message after which the connector is silent (inf: interval unknown)."""
    interval = conn.doubles[INTERVAL_S]
    if math.isnan(interval):
        return math.inf
    return max(policy.silent_min_s, policy.silent_factor * interval)


def on_tick(state: Mapping[str, object], now_rx: float, policy: LivePolicy = DEFAULT_POLICY,
            keys: Iterable[str] | None = None) -> list[tuple[str, list[LiveAlert]]]:
    """The timer: open `silent` and `never_unplugged` on connectors that say nothing.

    Args:
        state: the keyed state (read; the connectors found are changed in place).
        now_rx: the stream clock on the gateway's time scale (epoch s).
        policy: the thresholds.
        keys: the connectors to check (default every one in `state`).

    Returns:
        `(key, alerts)` of each connector changed: the caller writes those keys back.
    """
    out = []
    items = state.items() if keys is None else ((k, state.get(k)) for k in keys)
    for key, conn in items:
        if type(conn) is not ConnectorState or not conn.transaction_id:
            continue
        d = conn.doubles
        quiet = now_rx - d[LAST_RX]
        alerts: list[LiveAlert] = []
        if not conn.open_bits >> SILENT & 1 and quiet > silence_limit(conn, policy):
            interval = d[INTERVAL_S]
            conn.first_ts[SILENT] = d[LAST_TS] + interval
            conn.first_rx[SILENT] = d[LAST_RX] + interval
            conn.streaks[SILENT] = 1
            alerts.append(_open(conn, SILENT, d[LAST_TS] + quiet, (
                f"no message for {_duration(quiet)} in transaction {conn.transaction_id} "
                f"(it reports every {interval:.0f} s)"),
                {"seconds_quiet": quiet, "interval_s": interval}))
        if not conn.open_bits >> NEVER_UNPLUGGED & 1:
            _unplugged(conn, d[LAST_TS] + max(quiet, 0.0), now_rx, policy, alerts)
        if alerts:
            out.append((key, alerts))
    return out


def connector_status(conn: ConnectorState, updated_ts: float,
                     processor: str = "") -> ConnectorStatusMessage:
    """The live view's snapshot of one connector (contract §5c)."""
    if conn.open_bits >> SILENT & 1:
        state = "Offline"
    elif conn.status:
        state = conn.status
    else:
        state = "Occupied" if conn.transaction_id else "Available"
    in_tx = bool(conn.transaction_id)
    energy = conn.energy_wh - conn.tx_start_wh if in_tx else 0.0
    return ConnectorStatusMessage(
        conn.charge_point_id, conn.connector_id, conn.site_id, state,
        conn.transaction_id or None, conn.power_w if in_tx else 0.0,
        None if math.isnan(energy) else energy, conn.current_a if in_tx else None,
        conn.offered_a, conn.temperature_c, conn.error_code[:64],
        updated_ts if math.isnan(conn.last_rx) else conn.last_rx, updated_ts,
        conn.open_kinds, processor)
