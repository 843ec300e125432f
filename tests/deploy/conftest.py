"""The overlays are rendered by `kubectl kustomize`; without kubectl nothing here can run."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import OVERLAYS, kubectl, render


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    if kubectl() is None:
        pytest.skip("kubectl is not installed: it renders the Kustomize overlays "
                    "(`apt-get install kubectl`, or any kubectl >= 1.27 on PATH)")
    return request.param


@pytest.fixture
def docs(overlay: str) -> list[dict]:
    return render(overlay)


@pytest.fixture
def production() -> list[dict]:
    if kubectl() is None:
        pytest.skip("kubectl is not installed: it renders the Kustomize overlays")
    return render("production")
