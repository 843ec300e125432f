"""OCPP sampled values to SI measurands (`pipelines.contracts.telemetry.MEASURANDS`).

One meter value carries several sampled values: one per measurand, phase and
location. They become one dict of SI numbers:
- units: kWh -> Wh, kW -> W, Fahrenheit and K -> °C; 2.0.1's `unitOfMeasure.multiplier`
  (a power of ten) is applied first. A value in a unit that does not fit its measurand is
  left out, as is a signed value that is not a number.
- phases: a value without a phase (the charger's total) wins over per-phase values. Else
  energy and power are summed over L1, L2 and L3 (they add up); current is the largest
  phase current (offered current is per phase, so the two compare); voltage is the mean of
  the phase-to-neutral voltages, or of the phase-to-phase ones when there are no others.
  The neutral's current is left out.
- temperature (1.6 only: 2.0.1 has no Temperature measurand): the hottest location; state
  of charge: the EV's.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

MEASURAND_NAMES = {
    "Energy.Active.Import.Register": "energy_wh",
    "Power.Active.Import": "power_w",
    "Power.Offered": "power_offered_w",
    "Current.Import": "current_a",
    "Current.Offered": "current_offered_a",
    "Voltage": "voltage_v",
    "Temperature": "temperature_c",
    "SoC": "soc_pct",
}
DEFAULT_MEASURAND = "Energy.Active.Import.Register"

# unit (lower case) -> (SI unit, factor); temperatures are converted by _celsius
_SCALE = {
    "wh": ("Wh", 1.0), "kwh": ("Wh", 1000.0),
    "w": ("W", 1.0), "kw": ("W", 1000.0),
    "a": ("A", 1.0), "ma": ("A", 0.001),
    "v": ("V", 1.0), "kv": ("V", 1000.0),
    "percent": ("%", 1.0), "%": ("%", 1.0),
}
_TEMPERATURE_UNITS = {"celsius", "celcius", "fahrenheit", "k"}  # 1.6 schema spells "Celcius"
_SI_UNIT = {"energy_wh": "Wh", "power_w": "W", "power_offered_w": "W", "current_a": "A",
            "current_offered_a": "A", "voltage_v": "V", "soc_pct": "%"}
_DEFAULT_UNIT = {"energy_wh": "Wh", "power_w": "W", "power_offered_w": "W", "current_a": "A",
                 "current_offered_a": "A", "voltage_v": "V", "temperature_c": "Celsius",
                 "soc_pct": "Percent"}
_ADDITIVE = {"energy_wh", "power_w", "power_offered_w"}
_LINE_PHASES = ("L1", "L2", "L3")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _celsius(value: float, unit: str) -> float:
    if unit == "fahrenheit":
        return (value - 32.0) * 5.0 / 9.0
    if unit == "k":
        return value - 273.15
    return value


def to_si(name: str, value: float, unit: str | None) -> float | None:
    """`value` of measurand `name` given in `unit` (None = the OCPP default) in SI units, or
    None when the unit does not fit the measurand."""
    unit = (unit or _DEFAULT_UNIT[name]).strip().lower()
    if name == "temperature_c":
        return _celsius(value, unit) if unit in _TEMPERATURE_UNITS else None
    si_unit, factor = _SCALE.get(unit, ("", 0.0))
    if si_unit != _SI_UNIT[name]:
        return None
    return value * factor


def _reading(sample: Any, version: str) -> tuple[str, str, str, float] | None:
    """(measurand name, phase, location, SI value) of one sampled value, or None to skip."""
    if not isinstance(sample, dict):
        return None
    measurand = sample.get("measurand") or DEFAULT_MEASURAND
    name = MEASURAND_NAMES.get(measurand) if isinstance(measurand, str) else None
    value = _number(sample.get("value"))
    if name is None or value is None:
        return None
    if version == "1.6":
        unit = sample.get("unit")
        if sample.get("format") == "SignedData":
            return None
    else:
        measure = sample.get("unitOfMeasure")
        measure = measure if isinstance(measure, dict) else {}
        unit = measure.get("unit")
        multiplier = measure.get("multiplier", 0)
        if type(multiplier) is not int or not -30 <= multiplier <= 30:
            return None
        value *= 10.0 ** multiplier
    converted = to_si(name, value, unit if isinstance(unit, str) else None)
    if converted is None or not math.isfinite(converted):
        return None
    phase = sample.get("phase")
    location = sample.get("location")
    return (name, phase if isinstance(phase, str) else "",
            location if isinstance(location, str) else "", converted)


def _combine(name: str, by_phase: dict[str, list[float]]) -> float | None:
    if "" in by_phase:  # the charger's own total
        values = by_phase[""]
        return max(values) if name == "temperature_c" else values[-1]
    if name == "voltage_v":
        neutral = [v for p in ("L1-N", "L2-N", "L3-N") for v in by_phase.get(p, [])]
        lines = [v for p in ("L1-L2", "L2-L3", "L3-L1") for v in by_phase.get(p, [])]
        picked = neutral or lines or [v for p in _LINE_PHASES for v in by_phase.get(p, [])]
        return sum(picked) / len(picked) if picked else None
    phases = [by_phase[p][-1] for p in _LINE_PHASES if p in by_phase]
    if not phases:
        return None
    if name in _ADDITIVE:
        return sum(phases)
    return max(phases)


def sampled_measurands(sampled_values: Any, version: str) -> dict[str, float]:
    """The SI measurands of one meter value's `sampledValue` list (see the module doc)."""
    if not isinstance(sampled_values, list):
        return {}
    grouped: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for sample in sampled_values:
        reading = _reading(sample, version)
        if reading is None:
            continue
        name, phase, location, value = reading
        if name == "soc_pct" and location not in ("", "EV"):
            continue
        # temperatures of several locations are one "phase-less" group: the hottest counts
        grouped[name]["" if name == "temperature_c" else phase].append(value)
    measurands = {}
    for name, by_phase in grouped.items():
        combined = _combine(name, by_phase)
        if combined is not None and math.isfinite(combined):
            measurands[name] = combined
    return measurands
