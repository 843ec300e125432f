"""Render the Kubernetes overlays of deploy/kubernetes and look things up in them.

The renderer is `kubectl kustomize` (kustomize v5 built into kubectl), the same command
a user runs; nothing of Kustomize is re-implemented here. A rendered overlay is a list of
plain dicts, one per document.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import yaml

from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")
WORKLOAD_KINDS = ("Deployment", "Job")


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render_dir(path: Path) -> list[dict]:
    """`kubectl kustomize <path>` as a list of documents; a broken overlay raises."""
    done = subprocess.run([kubectl() or "kubectl", "kustomize", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode:
        raise RuntimeError(f"kubectl kustomize {path} failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@functools.cache
def _rendered(overlay: str) -> tuple[dict, ...]:
    return tuple(render_dir(KUBERNETES / "overlays" / overlay))


def render(overlay: str) -> list[dict]:
    """The overlay's documents (rendered once per test session; callers get copies)."""
    return yaml.safe_load(yaml.safe_dump(list(_rendered(overlay))))


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[dict], kind: str, name: str) -> dict:
    for doc in of_kind(docs, kind):
        if doc["metadata"]["name"] == name:
            return doc
    raise KeyError(f"no {kind} {name}")


@dataclass(frozen=True)
class Container:
    """A container of a workload, with the environment it would start with."""

    workload: dict
    spec: dict
    pod: dict

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def command(self) -> list[str]:
        return list(self.spec.get("command", [])) + list(self.spec.get("args", []))

    def env_names(self) -> set[str]:
        return {item["name"] for item in self.spec.get("env", [])}

    def configmap_names(self) -> list[str]:
        return [source["configMapRef"]["name"] for source in self.spec.get("envFrom", [])
                if "configMapRef" in source]

    def environment(self, docs: list[dict]) -> dict[str, str | None]:
        """Name -> value as the pod sees it: ConfigMaps from envFrom, then `env` (a value
        from a Secret or the downward API is None: known to exist, not known here)."""
        values: dict[str, str | None] = {}
        for name in self.configmap_names():
            values.update(named(docs, "ConfigMap", name).get("data", {}))
        for item in self.spec.get("env", []):
            values[item["name"]] = item.get("value")
        return values

    def settings(self, docs: list[dict]) -> Settings:
        """The evguard settings this container's process builds from its environment
        (read from the environment as the process reads it: lists are JSON, and so on)."""
        env = {name: value for name, value in self.environment(docs).items()
               if name.startswith("EVGUARD_") and value is not None}
        with mock.patch.dict(os.environ, env, clear=True):
            return Settings(_env_file=None)

    def port(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        for port in self.spec.get("ports", []):
            if port.get("name") == name_or_number:
                return port["containerPort"]
        raise KeyError(f"{self.name}: no port named {name_or_number}")

    def probes(self) -> dict[str, dict]:
        return {kind: self.spec[kind] for kind in ("startupProbe", "livenessProbe",
                                                   "readinessProbe") if kind in self.spec}


def containers(docs: list[dict]) -> Iterator[Container]:
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            pod = doc["spec"]["template"]["spec"]
            for spec in pod.get("initContainers", []) + pod["containers"]:
                yield Container(doc, spec, pod)


def container_of(docs: list[dict], deployment: str) -> Container:
    for container in containers(docs):
        if (container.workload["kind"] == "Deployment"
                and container.workload["metadata"]["name"] == deployment):
            return container
    raise KeyError(f"no Deployment {deployment}")


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of a Kustomize/kubectl env file (comments and blanks skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs
