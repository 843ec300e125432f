"""The compiled schema predicate (`ocpp_schemas._check`) agrees with jsonschema on every
action of both versions, requests and responses, for payloads built from the schemas
themselves: mostly valid ones, and ones broken one way at a random depth (a wrong type, a
missing required field, an extra field, a string too long, a number out of range, an
unknown enum value, a bad date-time, 1.0 or true for an integer)."""

from __future__ import annotations

import random

import pytest

from pipelines.telemetry import ocpp_schemas
from pipelines.telemetry.ocpp_schemas import VERSIONS, known_actions, schema_violation

WRONG = [None, True, 0, 1.0, 2.5, -1, "", "x", "2024-05-01T10:00:00Z", "not a date", [], {},
         [1], {"a": 1}, 10**12]


def resolve(schema: dict, root: dict) -> dict:
    while isinstance(schema, dict) and "$ref" in schema:
        schema = root["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def sample(schema: dict, root: dict, rng: random.Random, break_p: float, depth: int = 0):
    """An instance of `schema`, broken somewhere with probability ~`break_p` per node."""
    schema = resolve(schema, root)
    if rng.random() < break_p:
        return rng.choice(WRONG)
    kind = schema.get("type")
    kind = rng.choice(kind) if isinstance(kind, list) else kind
    if "enum" in schema:
        return rng.choice(schema["enum"]) if rng.random() > break_p else "NoSuchValue"
    if kind == "object" or "properties" in schema:
        out = {}
        for name, sub in schema.get("properties", {}).items():
            if (name in schema.get("required", ()) or rng.random() < 0.5) and depth < 6:
                out[name] = sample(sub, root, rng, break_p, depth + 1)
        if rng.random() < break_p and out:
            out.pop(rng.choice(list(out)))
        if rng.random() < break_p:
            out["unexpectedField"] = 1
        return out
    if kind == "array":
        n = max(schema.get("minItems", 0), rng.randint(0, 3))
        if rng.random() < break_p:
            n = schema.get("maxItems", 3) + 1 if rng.random() < 0.5 else 0
        return [sample(schema.get("items", {}), root, rng, break_p, depth + 1)
                for _ in range(min(n, 6))]
    if kind == "string":
        if schema.get("format") == "date-time":
            return rng.choice(["2024-05-01T10:00:00Z", "2024-05-01T10:00:00.123+02:00",
                               "2024-13-01T10:00:00Z" if rng.random() < break_p else
                               "2024-05-01T10:00:00"])
        limit = schema.get("maxLength", 20)
        return "a" * (limit + 1 if rng.random() < break_p else rng.randint(0, limit))
    if kind == "integer":
        low, high = schema.get("minimum", -5), schema.get("maximum", 1000)
        if rng.random() < break_p:
            return rng.choice([low - 1, high + 1, 1.0, True])
        return rng.randint(int(low), int(high))
    if kind == "number":
        low, high = schema.get("minimum", -5.0), schema.get("maximum", 1000.0)
        if rng.random() < break_p:
            return rng.choice([low - 0.5, high + 0.5, "1", False])
        return rng.choice([rng.uniform(low, high), int(low)])
    if kind == "boolean":
        return rng.random() < 0.5 if rng.random() > break_p else 1
    return rng.choice(WRONG)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_compiled_check_agrees_with_jsonschema(version):
    rng = random.Random(f"schema-check-{version}")
    agreed = {True: 0, False: 0}
    for action in sorted(known_actions(version)):
        for response in (False, True):
            validator = ocpp_schemas._validator(version, action, response)
            check = ocpp_schemas._check(version, action, response)
            for i in range(60):
                payload = sample(validator.schema, validator.schema, rng,
                                 0.0 if i % 3 == 0 else 0.05 * (i % 5))
                valid = next(iter(validator.iter_errors(payload)), None) is None
                assert check(payload) is valid, (version, action, response, payload)
                agreed[valid] += 1
    # both outcomes were exercised, plenty of each
    assert agreed[True] > 1000 and agreed[False] > 1000, agreed


def test_schema_violation_still_names_the_error():
    assert schema_violation("1.6", "Heartbeat", {}) is None
    code, text = schema_violation("1.6", "MeterValues", {"connectorId": "1", "meterValue": [
        {"timestamp": "2024-05-01T10:00:00Z", "sampledValue": [{"value": "1"}]}]})
    assert code == "TypeConstraintViolation" and text.startswith("connectorId")
    code, _ = schema_violation("2.0.1", "MeterValues", {"evseId": 1})
    assert code == "OccurrenceConstraintViolation"
