"""The charge point registry and `evguard ocpp add-charger`: hashes only, reloads, refusals."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from evguard.cli import app
from gateway.registry import Registry, RegistryError, add_charger, password_matches

runner = CliRunner()


def test_add_charger_stores_a_salted_hash_never_the_password(tmp_path, monkeypatch):
    path = tmp_path / "cps.json"
    monkeypatch.setenv("EVGUARD_OCPP_CHARGE_POINTS", str(path))
    added = runner.invoke(app, ["ocpp", "add-charger", "CP-1", "--site", "caltech",
                                "--password-stdin"], input="hunter2-but-longer\n")
    again = runner.invoke(app, ["ocpp", "add-charger", "CP-2", "--site", "caltech",
                                "--password", "hunter2-but-longer"])
    assert added.exit_code == 0 and again.exit_code == 0, added.output + again.output
    text = path.read_text()
    assert "hunter2" not in text
    entries = json.loads(text)["charge_points"]
    assert entries["CP-1"]["site"] == "caltech"
    one, two = entries["CP-1"]["password"], entries["CP-2"]["password"]
    assert one["salt"] != two["salt"] and one["hash"] != two["hash"]  # salted
    assert password_matches("hunter2-but-longer", one)
    assert not password_matches("hunter2-but-longer!", one)
    replaced = runner.invoke(app, ["ocpp", "add-charger", "CP-1", "--site", "jpl"])
    assert replaced.exit_code == 0 and "replaced" in replaced.output
    assert "password" not in json.loads(path.read_text())["charge_points"]["CP-1"]


def test_bad_ids_and_conflicting_options_are_refused_readably(tmp_path, monkeypatch):
    monkeypatch.setenv("EVGUARD_OCPP_CHARGE_POINTS", str(tmp_path / "cps.json"))
    bad_id = runner.invoke(app, ["ocpp", "add-charger", "CP/1"])
    both = runner.invoke(app, ["ocpp", "add-charger", "CP-1", "--password", "x",
                               "--password-stdin"], input="y\n")
    assert bad_id.exit_code == 1 and "character" in bad_id.output
    assert both.exit_code == 2
    assert not (tmp_path / "cps.json").exists()


def test_the_registry_authenticates_and_picks_up_a_changed_file(tmp_path):
    path = tmp_path / "cps.json"
    add_charger(path, "CP-1", "caltech", "pw-one")
    registry = Registry(path)
    assert registry.authenticate("CP-1", "pw-one").site == "caltech"
    assert registry.authenticate("CP-1", "pw-one") is not None  # the remembered path
    assert registry.authenticate("CP-1", "pw-two") is None
    assert registry.authenticate("CP-1", None) is None
    assert registry.authenticate("CP-9", None) is None
    add_charger(path, "CP-1", "jpl", "pw-two")
    add_charger(path, "CP-9", "jpl", None)
    registry.reload()
    assert registry.authenticate("CP-1", "pw-one") is None  # the old password is gone
    assert registry.authenticate("CP-1", "pw-two").site == "jpl"
    assert registry.authenticate("CP-9", None).known
    open_door = Registry(path, allow_unknown=True).authenticate("CP-NEW", None)
    assert open_door is not None and not open_door.known and open_door.site == ""


def test_a_broken_registry_fails_at_start_but_not_a_running_gateway(tmp_path):
    path = tmp_path / "cps.json"
    add_charger(path, "CP-1", "caltech", None)
    registry = Registry(path)
    path.write_text("{not json")
    registry.reload()  # logged; the chargers already known still get in
    assert registry.authenticate("CP-1", None).site == "caltech"
    with pytest.raises(RegistryError, match="unreadable"):
        Registry(path)  # a broken registry does not start a gateway
