"""KEDA objects use fields KEDA has, and scale each part on the signal it really consumes."""

from __future__ import annotations

import jsonschema
import kubernetes_validate

from tests.deploy import keda_schema
from tests.deploy.manifests import container_of, named, of_kind
from tests.deploy.test_manifests import KUBERNETES_VERSION

# Deployment -> (trigger type, the setting naming what it consumes)
SIGNALS = {"serving": ("kafka", "consumer_group"), "telemetry": ("kafka", "telemetry_group"),
           "monitor": ("rabbitmq", "monitoring_queue"), "alert": ("rabbitmq", "alerts_queue")}
# Deployment -> the setting naming the topic whose partitions bound its replicas
TOPICS = {"serving": "topic_sessions", "telemetry": "topic_telemetry"}


def auth_params(docs: list[dict], trigger: dict) -> set[str]:
    ref = trigger.get("authenticationRef")
    if ref is None:
        return set()
    spec = named(docs, "TriggerAuthentication", ref["name"])["spec"]
    return {item["parameter"] for refs in spec.values() for item in refs}


def test_keda_objects_use_only_fields_keda_has(production):
    scaled = of_kind(production, "ScaledObject")
    assert {s["metadata"]["name"] for s in scaled} == set(SIGNALS)
    for auth in of_kind(production, "TriggerAuthentication"):
        jsonschema.validate(auth, keda_schema.TRIGGER_AUTHENTICATION)
        for ref in auth["spec"].get("secretTargetRef", []):
            assert ref["name"] == "evguard-secrets"
    for obj in scaled:
        jsonschema.validate(obj, keda_schema.SCALED_OBJECT)
        target = container_of(production, obj["spec"]["scaleTargetRef"]["name"])
        env_names = set(target.environment(production))
        for trigger in obj["spec"]["triggers"]:
            problems = keda_schema.trigger_problems(trigger, auth_params(production, trigger),
                                                    env_names)
            assert not problems, f"{obj['metadata']['name']}: {problems}"
        behavior = (obj["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
                    .get("behavior"))
        if behavior:  # KEDA hands this to the HPA it creates: the API's own schema applies
            kubernetes_validate.validate(
                {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                 "metadata": {"name": "check"},
                 "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"},
                          "maxReplicas": 1, "behavior": behavior}},
                KUBERNETES_VERSION, strict=True)


def test_each_part_scales_on_what_it_consumes(production):
    for obj in of_kind(production, "ScaledObject"):
        name = obj["metadata"]["name"]
        kind, setting = SIGNALS[name]
        target = container_of(production, name)
        settings = target.settings(production)
        environment = target.environment(production)
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["type"] == kind, name
        metadata = trigger["metadata"]
        if kind == "kafka":
            # the lag KEDA reads is the lag of the very group and topic the process uses
            group = environment[metadata["consumerGroupFromEnv"]]
            topic = environment[metadata["topicFromEnv"]]
            assert group == getattr(settings, setting), name
            assert topic == getattr(settings, TOPICS[name]), name
            assert environment[metadata["bootstrapServersFromEnv"]] == settings.kafka_bootstrap
        else:
            assert metadata["queueName"] == getattr(settings, setting), name


def test_kafka_consumers_never_scale_past_the_partitions(production):
    for obj in of_kind(production, "ScaledObject"):
        name = obj["metadata"]["name"]
        if name not in TOPICS:
            continue
        partitions = container_of(production, name).settings(production).topic_partitions
        spec = obj["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions, name
        (trigger,) = spec["triggers"]
        # KEDA's own cap at the partition count stays on
        assert trigger["metadata"].get("allowIdleConsumers", "false") == "false", name
