import pytest

from tests.interop.node_peer import node_or_skip


@pytest.fixture(scope="session")
def node() -> str:
    """node, with the npm OCPP implementations installed (skips without node/npm)."""
    return node_or_skip()
