"""Each overlay renders, every document is valid Kubernetes, and the pods are locked down."""

from __future__ import annotations

import subprocess

import jsonschema
import kubernetes_validate

from tests.deploy import keda_schema
from tests.deploy.manifests import (
    KUBERNETES,
    ROOT,
    containers,
    env_file,
    named,
    of_kind,
)

# A current Kubernetes release: the newest whose API schemas kubernetes-validate ships.
KUBERNETES_VERSION = "1.37.0"
KEDA_SCHEMAS = {"ScaledObject": keda_schema.SCALED_OBJECT,
                "TriggerAuthentication": keda_schema.TRIGGER_AUTHENTICATION}
# Every process kind of evguard, as issue 16 lists them.
DEPLOYMENTS = {"serving", "monitor", "alert", "dashboard", "ocpp-gateway", "telemetry",
               "prefect-worker", "mlflow", "prefect-server"}
LONG_RUNNING_CONSUMERS = {"serving", "telemetry", "monitor", "alert"}
# Processes that serve no HTTP endpoint a probe could call (none since the consumers serve
# /healthz too); a probe on one of them would fail for ever.
NO_HEALTH_ENDPOINT: set[str] = set()


def test_every_document_is_valid_against_the_kubernetes_api(docs):
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["kind"] in KEDA_SCHEMAS:
            jsonschema.validate(doc, KEDA_SCHEMAS[doc["kind"]])
            continue
        # strict: a field the API does not have is an error, not silently dropped
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert {"Deployment", "Service", "ConfigMap", "Ingress", "NetworkPolicy",
            "PodDisruptionBudget"} <= kinds


def test_one_deployment_per_process_kind_all_from_the_one_image(docs):
    assert {d["metadata"]["name"] for d in of_kind(docs, "Deployment")} == DEPLOYMENTS
    images = {c.spec["image"] for c in containers(docs)}
    assert len(images) == 1, images


def test_pods_run_as_non_root_on_a_read_only_root_without_escalation(docs):
    for container in containers(docs):
        where = f"{container.workload['metadata']['name']}/{container.name}"
        pod_security = container.pod.get("securityContext", {})
        security = container.spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, where
        assert pod_security.get("runAsUser", 0) > 0, where
        assert security.get("readOnlyRootFilesystem") is True, where
        assert security.get("allowPrivilegeEscalation") is False, where
        assert security.get("capabilities", {}).get("drop") == ["ALL"], where
        assert container.pod.get("automountServiceAccountToken") is False, where
        # what the processes write (temp files, HOME) is a volume, not the image
        mounts = {m["mountPath"] for m in container.spec.get("volumeMounts", [])}
        assert "/tmp" in mounts, where
        assert {"name": "HOME", "value": "/tmp"} in container.spec["env"], where


def test_every_container_has_requests_and_limits(docs):
    for container in containers(docs):
        resources = container.spec.get("resources", {})
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(part, {})), (container.name, part)


def test_probes_where_there_is_a_health_endpoint_and_only_there(docs):
    for container in containers(docs):
        if container.workload["kind"] != "Deployment":
            continue
        name = container.workload["metadata"]["name"]
        probes = container.probes()
        if name in NO_HEALTH_ENDPOINT:
            assert not probes, f"{name} serves no endpoint, yet has {sorted(probes)}"
        else:
            assert "livenessProbe" in probes, name
            assert all("httpGet" in probe for probe in probes.values()), name


def test_long_running_consumers_have_disruption_budgets(docs):
    covered = set()
    for budget in of_kind(docs, "PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"]
        for deployment in of_kind(docs, "Deployment"):
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            if selector.items() <= labels.items():
                covered.add(deployment["metadata"]["name"])
        # a budget of minAvailable = replicas would block every node drain
        assert "maxUnavailable" in budget["spec"], budget["metadata"]["name"]
    assert LONG_RUNNING_CONSUMERS <= covered


def test_each_part_has_its_network_policy_after_a_default_deny(docs):
    policies = of_kind(docs, "NetworkPolicy")
    deny = named(docs, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    selected = {p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
                for p in policies}
    workloads = {c.workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
                 for c in containers(docs)}
    assert workloads <= selected


def test_services_and_ingresses_lead_to_ports_a_container_declares(docs):
    for service in of_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        pods = [c for c in containers(docs) if c.workload["kind"] == "Deployment"
                and selector.items() <= c.workload["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, (service["metadata"]["name"], len(pods))
        for port in service["spec"]["ports"]:
            pods[0].port(port["targetPort"])  # a name the container does not have raises
    for ingress in of_kind(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                ports = named(docs, "Service", backend["name"])["spec"]["ports"]
                assert backend["port"]["name"] in {p["name"] for p in ports}, backend


def test_the_ingress_reaches_the_dashboard_and_the_gateway_websocket(docs):
    backends = set()
    for ingress in of_kind(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                service = path["backend"]["service"]
                backends.add((service["name"], service["port"]["name"]))
    assert backends == {("dashboard", "http"), ("ocpp-gateway", "ocpp")}
    gateway = named(docs, "Ingress", "ocpp-gateway")["metadata"]["annotations"]
    # a charger's socket idles up to one heartbeat (300 s) between frames
    assert int(gateway["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 300


def test_no_secret_value_is_committed(docs):
    assert not of_kind(docs, "Secret"), "Secrets are made with kubectl, never rendered"
    example = env_file(KUBERNETES / "secrets.env.example")
    assert example and all(value == "" for value in example.values())
    for container in containers(docs):
        for item in container.spec.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "evguard-secrets", item
                assert ref["key"] in example, f"{ref['key']} missing from secrets.env.example"
    ignored = subprocess.run(["git", "check-ignore", "-q",
                              str(KUBERNETES / "secrets.env")], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "deploy/kubernetes/secrets.env must be git-ignored"


def test_no_secret_setting_sits_in_the_configmap(docs):
    secret_keys = set(env_file(KUBERNETES / "secrets.env.example"))
    for config in of_kind(docs, "ConfigMap"):
        assert not secret_keys & set(config.get("data", {})), config["metadata"]["name"]
