"""Every recipe in conf/recipe composes with the schema and passes validation."""

from __future__ import annotations

import itertools

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO
from nmt.config import register
from nmt.config_checks import validate

RECIPES = sorted(p.stem for p in (REPO / "conf" / "recipe").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_and_validates(recipe):
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("config", overrides=[f"+recipe={recipe}"]))
    validate(cfg)
    assert cfg.name == recipe
    assert (REPO / "recipes" / recipe / "README.md").is_file(), f"recipes/{recipe}/README.md is missing"


def test_curriculum_recipe_stages_nest():
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("config", overrides=["+recipe=curriculum"]))
    stages = cfg.curriculum.stages
    assert [s.start_step for s in stages] == [0, 1000, 2000]
    assert all(set(a.directions) < set(b.directions) for a, b in itertools.pairwise(stages))
    assert len(stages[-1].directions) == 14  # every direction of the default demo corpus
