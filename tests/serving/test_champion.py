"""The champion watcher: loads off the hot path, swaps between batches, survives the registry."""

from __future__ import annotations

import pytest

from pipelines.data.features import FEATURE_COLUMNS
from pipelines.models.registry import NoChampionError
from serving.champion import ChampionWatcher, IncompatibleModelError
from tests.serving.stand_ins import PowerScorer


class Registry:
    """A registry stand-in the watcher polls: the version behind the alias, or a failure."""

    def __init__(self, version: str | None) -> None:
        self.version = version
        self.down = False
        self.loads = 0
        self.calibrated_at: str | None = None  # the registry's re-calibration stamp
        self.feature_columns = list(PowerScorer.feature_columns)

    def poll(self) -> str | None:
        if self.down:
            raise ConnectionError("registry unreachable")
        if self.version is not None and self.calibrated_at:
            return f"{self.version}@{self.calibrated_at}"
        return self.version

    def load(self) -> PowerScorer:
        self.loads += 1
        model = PowerScorer(version=self.version)
        model.stamp = self.poll()
        model.feature_columns = self.feature_columns
        return model


def watcher(reg: Registry, **kw) -> ChampionWatcher:
    return ChampionWatcher(reg.load, reg.poll, interval_s=0, feature_columns=FEATURE_COLUMNS,
                          **kw)


def test_no_champion_at_start_is_a_clear_error():
    with pytest.raises(NoChampionError, match="evguard train"):
        watcher(Registry(None)).start()


def test_a_model_needing_a_feature_not_computed_here_is_refused_at_start():
    reg = Registry("1")
    reg.feature_columns = [*FEATURE_COLUMNS[:5], "wind_speed"]
    with pytest.raises(IncompatibleModelError, match="wind_speed"):
        watcher(reg).start()


def test_a_model_on_an_older_feature_version_serves_on_the_columns_it_knows():
    reg = Registry("1")
    reg.feature_columns = FEATURE_COLUMNS[:16]  # version f1: a prefix of today's columns
    assert watcher(reg).start().version == "1"


def test_a_new_champion_is_loaded_in_the_background_and_swapped_on_the_next_batch():
    reg = Registry("1")
    swaps = []
    w = watcher(reg, on_swap=lambda m: swaps.append(m.version))
    assert w.start().version == "1"
    w.check_now()
    assert reg.loads == 1  # same version: nothing loaded
    reg.version = "2"
    w.check_now()
    assert reg.loads == 2 and swaps == ["1"]  # loaded, not yet serving
    assert w.current().version == "2" and swaps == ["1", "2"]


def test_registry_down_or_alias_gone_keeps_the_loaded_model():
    reg = Registry("1")
    errors = []
    w = watcher(reg, on_error=lambda: errors.append(1))
    w.start()
    reg.down = True
    w.check_now()
    reg.down, reg.version = False, None
    w.check_now()
    assert w.current().version == "1" and errors == [1]


def test_an_incompatible_new_champion_is_not_swapped_in_nor_reloaded_every_poll():
    reg = Registry("1")
    w = watcher(reg)
    w.start()
    reg.version, reg.feature_columns = "2", ["wind_speed"]
    w.check_now()
    w.check_now()
    assert w.current().version == "1" and reg.loads == 2


def test_a_recalibrated_threshold_of_the_same_champion_is_reloaded_once():
    reg = Registry("4")
    w = watcher(reg)
    w.start()
    reg.calibrated_at = "2026-12-03T10:00:00+00:00"
    w.check_now()
    w.check_now()
    assert reg.loads == 2 and w.current().stamp == "4@2026-12-03T10:00:00+00:00"
