"""The KEDA fields deploy/kubernetes may use, as a schema the tests check the objects with.

kubernetes-validate knows the Kubernetes API, not KEDA's custom resources, and no package
installable here carries KEDA's CRDs. This is a small schema of our own, written from
KEDA's Go types and scaler configs (kedacore/keda v2.20: `apis/keda/v1alpha1/
scaledobject_types.go`, `scaletriggers_types.go`, `triggerauthentication_types.go`,
`pkg/scalers/kafka_scaler.go`, `pkg/scalers/rabbitmq_scaler.go`). It lists every field of
the objects (a misspelt one is an error, as KEDA's structural CRD would prune it) and, per
scaler, the trigger metadata keys with their allowed values. A key read "from env"
(`<key>FromEnv`, KEDA's `resolvedEnv` order) names a variable of the target container.
"""

from __future__ import annotations

INT = {"type": "integer", "minimum": 0}
NAME = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}

SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"name": NAME, "apiVersion": {"type": "string"},
                                   "kind": {"type": "string"},
                                   "envSourceContainerName": {"type": "string"}}},
                "pollingInterval": INT, "initialCooldownPeriod": INT, "cooldownPeriod": INT,
                "idleReplicaCount": INT, "minReplicaCount": INT, "maxReplicaCount": INT,
                "advanced": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "horizontalPodAutoscalerConfig": {
                            "type": "object", "additionalProperties": False,
                            # `behavior` is autoscaling/v2's: checked by kubernetes-validate
                            "properties": {"name": {"type": "string"},
                                           "behavior": {"type": "object"}}},
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "scalingModifiers": {"type": "object"}}},
                "fallback": {
                    "type": "object", "required": ["failureThreshold", "replicas"],
                    "additionalProperties": False,
                    "properties": {"failureThreshold": INT, "replicas": INT,
                                   "behavior": {"type": "string"}}},
                "triggers": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "useCachedMetrics": {"type": "boolean"},
                            "metadata": {"type": "object",
                                         "additionalProperties": {"type": "string"}},
                            "authenticationRef": {
                                "type": "object", "required": ["name"],
                                "additionalProperties": False,
                                "properties": {"name": NAME,
                                               "kind": {"enum": ["TriggerAuthentication",
                                                                 "ClusterTriggerAuthentication"]}}},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        }}},
            }},
    },
}

TRIGGER_AUTHENTICATION = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "additionalProperties": False, "minProperties": 1,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {"type": "object", "required": ["parameter", "name", "key"],
                              "additionalProperties": False,
                              "properties": {"parameter": {"type": "string"}, "name": NAME,
                                             "key": {"type": "string"}}}},
                "configMapTargetRef": {
                    "type": "array",
                    "items": {"type": "object", "required": ["parameter", "name", "key"],
                              "additionalProperties": False,
                              "properties": {"parameter": {"type": "string"}, "name": NAME,
                                             "key": {"type": "string"}}}},
                "env": {
                    "type": "array",
                    "items": {"type": "object", "required": ["parameter", "name"],
                              "additionalProperties": False,
                              "properties": {"parameter": {"type": "string"},
                                             "name": {"type": "string"},
                                             "containerName": {"type": "string"}}}},
            }},
    },
}


class Param:
    """One scaler parameter: where KEDA reads it from, and its allowed values."""

    def __init__(self, *orders: str, required: bool = False, enum: tuple[str, ...] = (),
                 integer: bool = False, number: bool = False, boolean: bool = False) -> None:
        self.orders = set(orders)
        self.required = required
        self.enum = enum
        self.integer, self.number, self.boolean = integer, number, boolean

    def problem(self, value: str) -> str | None:
        if self.enum and value not in self.enum:
            return f"{value!r} is not one of {self.enum}"
        if self.boolean and value not in ("true", "false"):
            return f"{value!r} is not a boolean"
        if self.integer and not value.lstrip("-").isdigit():
            return f"{value!r} is not an integer"
        if self.number:
            try:
                float(value)
            except ValueError:
                return f"{value!r} is not a number"
        return None


META, ENV, AUTH = "triggerMetadata", "resolvedEnv", "authParams"

# Parameters of the two scalers evguard uses (the others of these scalers are left out
# on purpose: a key not listed here is an error until someone checks it against KEDA).
SCALERS: dict[str, dict[str, Param]] = {
    "kafka": {
        "bootstrapServers": Param(META, ENV, required=True),
        "consumerGroup": Param(META, ENV, required=True),
        "topic": Param(META, ENV),
        "partitionLimitation": Param(META),
        "lagThreshold": Param(META, integer=True),
        "activationLagThreshold": Param(META, integer=True),
        "offsetResetPolicy": Param(META, enum=("latest", "earliest")),
        "allowIdleConsumers": Param(META, boolean=True),
        "excludePersistentLag": Param(META, boolean=True),
        "scaleToZeroOnInvalidOffset": Param(META, boolean=True),
        "limitToPartitionsWithLag": Param(META, boolean=True),
        "ensureEvenDistributionOfPartitions": Param(META, boolean=True),
        "version": Param(META),
        "tls": Param(META, AUTH, enum=("enable", "disable")),
        "sasl": Param(META, AUTH, enum=("none", "plaintext", "scram_sha256", "scram_sha512",
                                        "oauthbearer", "gssapi")),
        "username": Param(AUTH), "password": Param(AUTH), "ca": Param(AUTH),
        "cert": Param(AUTH), "key": Param(AUTH), "keyPassword": Param(AUTH),
        "unsafeSsl": Param(META, boolean=True),
    },
    "rabbitmq": {
        "queueName": Param(META, required=True),
        "mode": Param(META, enum=("QueueLength", "MessageRate")),
        "value": Param(META, number=True),
        "activationValue": Param(META, number=True),
        "host": Param(META, AUTH, ENV, required=True),
        "protocol": Param(META, AUTH, enum=("auto", "amqp", "http")),
        "vhostName": Param(META, AUTH),
        "useRegex": Param(META, boolean=True),
        "excludeUnacknowledged": Param(META, boolean=True),
        "pageSize": Param(META, integer=True),
        "operation": Param(META, enum=("sum", "max", "avg")),
        "timeout": Param(META, integer=True),
        "username": Param(AUTH, ENV), "password": Param(AUTH, ENV),
        "tls": Param(AUTH, enum=("enable", "disable")),
        "unsafeSsl": Param(META, boolean=True),
    },
}


def trigger_problems(trigger: dict, auth_params: set[str], env_names: set[str]) -> list[str]:
    """What is wrong with one trigger's metadata, given the parameters its
    TriggerAuthentication supplies and the target container's variable names."""
    scaler = SCALERS.get(trigger["type"])
    if scaler is None:
        return [f"trigger type {trigger['type']!r} is not one this schema knows"]
    problems = []
    metadata = trigger["metadata"]
    for key, value in metadata.items():
        base = key.removesuffix("FromEnv")
        param = scaler.get(base)
        if param is None:
            problems.append(f"{trigger['type']}: unknown metadata key {key!r}")
        elif key.endswith("FromEnv"):
            if ENV not in param.orders:
                problems.append(f"{trigger['type']}: {base!r} cannot be read from env")
            elif value not in env_names:
                problems.append(f"{trigger['type']}: {key} names {value!r}, which the target "
                                "container does not have")
        elif META not in param.orders:
            problems.append(f"{trigger['type']}: {key!r} belongs in a TriggerAuthentication")
        elif (problem := param.problem(value)) is not None:
            problems.append(f"{trigger['type']}: {key}: {problem}")
    for key in auth_params:
        param = scaler.get(key)
        if param is None or AUTH not in param.orders:
            problems.append(f"{trigger['type']}: {key!r} is not an authentication parameter")
    for key, param in scaler.items():
        given = key in metadata or f"{key}FromEnv" in metadata or key in auth_params
        if param.required and not given:
            problems.append(f"{trigger['type']}: {key!r} is required")
    return problems
