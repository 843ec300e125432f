"""The independent OCPP peer (tests/interop/ocpp_rpc_peer.js, npm `ocpp-rpc`) as the tests
see it: a charge point that runs a plan and reports what it saw, and a CSMS process.

Node runs with a timeout and is stopped by its own PID. Without node/npm the tests skip;
with them, the npm packages are installed (scripts/ensure-node-ocpp.sh) when missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INTEROP_DIR = Path(__file__).resolve().parent
PEER = INTEROP_DIR / "ocpp_rpc_peer.js"
OCPP_TS_CHARGE_POINT = INTEROP_DIR / "ocpp_ts_charge_point.js"
ENSURE = INTEROP_DIR.parents[1] / "scripts" / "ensure-node-ocpp.sh"
NODE_TIMEOUT_S = 90


def node_or_skip() -> str:
    """The node binary, with the npm packages installed; skips when node/npm is absent."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not installed: the independent OCPP implementations are npm "
                    "packages (apt-get install nodejs npm)")
    subprocess.run(["bash", str(ENSURE)], check=True, timeout=300)
    return node


@dataclass
class PeerReport:
    """What the independent peer reported, one JSON object per line."""

    facts: list[dict]
    stderr: str = ""
    returncode: int | None = None

    @classmethod
    def parse(cls, stdout: str, stderr: str = "", returncode: int | None = None) -> PeerReport:
        return cls([json.loads(line) for line in stdout.splitlines() if line.strip()],
                   stderr, returncode)

    def steps(self) -> list[dict]:
        return [fact for fact in self.facts if "step" in fact]

    def events(self, name: str) -> list[dict]:
        return [fact for fact in self.facts if fact.get("event") == name]

    def frames(self, direction: str, identity: str | None = None) -> list[str]:
        return [fact["text"] for fact in self.events("frame")
                if fact["direction"] == direction
                and (identity is None or fact["identity"] == identity)]

    def __str__(self) -> str:  # shown by pytest when an assertion on a report fails
        return "\n".join(json.dumps(fact) for fact in self.facts) + self.stderr


def run_charge_point(node: str, url: str, identity: str, version: str, steps: list[dict],
                     password: str | None = None, strict: bool = True,
                     protocols: list[str] | None = None,
                     ca_file: Path | None = None) -> PeerReport:
    """Connect the independent charge point to `url`/`identity` and run `steps`
    (`protocols`: the subprotocols it offers, in its order of preference; `ca_file`: the
    certificate to trust on wss://)."""
    plan = {"url": url, "identity": identity, "password": password, "version": version,
            "strict": strict, "steps": steps, "protocols": protocols,
            "caFile": str(ca_file) if ca_file else None}
    return run_node_plan([node, str(PEER), "charge-point"], plan)


def run_ocpp_ts_charge_point(node: str, url: str, identity: str, steps: list[dict],
                             password: str | None = None) -> PeerReport:
    """The second implementation (npm `ocpp-ts`, 1.6J only) runs `steps`."""
    plan = {"url": url, "identity": identity, "password": password, "steps": steps}
    return run_node_plan([node, str(OCPP_TS_CHARGE_POINT)], plan)


def run_node_plan(command: list[str], plan: dict) -> PeerReport:
    """Run a Node peer with `plan` on stdin; subprocess kills it (its own PID) on timeout."""
    done = subprocess.run(command, input=json.dumps(plan), check=False, capture_output=True,
                          text=True, timeout=NODE_TIMEOUT_S, cwd=INTEROP_DIR)
    return PeerReport.parse(done.stdout, done.stderr, done.returncode)


async def run_charge_point_async(node: str, url: str, identity: str, version: str,
                                 steps: list[dict], password: str | None = None,
                                 protocols: list[str] | None = None,
                                 handlers: dict[str, dict] | None = None) -> PeerReport:
    """`run_charge_point` without blocking the event loop the gateway under test runs on;
    `handlers` answer the CSMS's calls ({action: result})."""
    plan = {"url": url, "identity": identity, "password": password, "version": version,
            "strict": True, "steps": steps, "protocols": protocols, "handlers": handlers}
    process = await asyncio.create_subprocess_exec(
        node, str(PEER), "charge-point", cwd=INTEROP_DIR, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(
            process.communicate(json.dumps(plan).encode()), NODE_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return PeerReport.parse(stdout.decode(), stderr.decode(), process.returncode)


@dataclass
class RunningCsms:
    """The independent CSMS (ocpp-rpc's server side, strict mode) while it runs."""

    url: str
    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    def report(self) -> PeerReport:
        return PeerReport.parse("\n".join(self.lines))


@contextlib.asynccontextmanager
async def independent_csms(node: str, password: str | None = None,
                           protocols: list[str] | None = None,
                           calls_after_boot: dict[str, list] | None = None,
                           ) -> AsyncIterator[RunningCsms]:
    """Start the CSMS on a free port of 127.0.0.1 (accepting `protocols`, default both
    versions; after each boot it calls the charger with `calls_after_boot[subprotocol]`,
    a list of [action, params]); stop it (own PID) when the block ends."""
    process = await asyncio.create_subprocess_exec(
        node, str(PEER), "csms", cwd=INTEROP_DIR, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write((json.dumps({"port": 0, "password": password, "protocols": protocols,
                                "callsAfterBoot": calls_after_boot}) + "\n").encode())
    await process.stdin.drain()
    first = json.loads(await asyncio.wait_for(process.stdout.readline(), 30) or b"{}")
    if first.get("event") != "listening":
        process.kill()
        await process.wait()
        raise AssertionError(f"the independent CSMS did not start: {first}")
    csms = RunningCsms(f"ws://127.0.0.1:{first['port']}", process)

    async def collect() -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            csms.lines.append(line.decode())

    collector = asyncio.create_task(collect())
    try:
        yield csms
    finally:
        process.stdin.close()  # the CSMS stops when its stdin ends
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
        await asyncio.wait_for(collector, 10)
