"""One home for every default: the schemas in config.py. Group files and presets state
only what differs from the defaults they start from, so a config built from the
dataclasses is the one the command line composes."""

from __future__ import annotations

import dataclasses
from enum import Enum

import pytest
import yaml
from conftest import compose
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from bslrun import cli
from bslrun.config import EvalConfig, OptimConfig, TrainerConfig, as_dict
from bslrun.registry import DATA_SCHEMA_NAMES, FAMILIES, register

CONFIGS = cli.CONFIG_DIR
SCHEMAS = {("data", name): schema for schema, name in DATA_SCHEMA_NAMES.items()}
SCHEMAS.update({("model", name): entry.schema for name, entry in FAMILIES.items()})
SCHEMAS.update({("optim", "optim"): OptimConfig, ("trainer", "trainer"): TrainerConfig})
IDENTITY = ("name", "family")  # which data set or family a file is: stated by design
GROUP_FILES = sorted(
    p for group in ("data", "model", "optim", "trainer") for p in (CONFIGS / group).glob("*.yaml")
)
PRESETS = sorted((CONFIGS / "experiment").rglob("*.yaml"))


def schema_default(field: dataclasses.Field):
    value = (
        field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
    )
    return value.value if isinstance(value, Enum) else value


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_group_files_state_only_what_differs_from_the_schema(path):
    doc = yaml.safe_load(path.read_text())
    extended = [d for d in doc["defaults"] if isinstance(d, str) and d.startswith("/schema/")]
    group, name = extended[0].split("@")[0].split("/")[2:4]
    defaults = {f.name: schema_default(f) for f in dataclasses.fields(SCHEMAS[group, name])}
    restated = [
        f"{key}={value!r}"
        for key, value in doc.items()
        if key not in ("defaults", *IDENTITY) and defaults.get(key, object()) == value
    ]
    assert restated == [], f"{path.name} restates schema defaults: drop them"


def preset_choices(doc: dict) -> list[str]:
    """The group overrides a preset starts from (``override /model: vae`` -> model=vae)."""
    return [
        f"{key.removeprefix('override /')}={value}"
        for entry in doc.get("defaults", [])
        if isinstance(entry, dict)
        for key, value in entry.items()
    ]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_presets_state_only_what_differs_from_their_start(path):
    doc = yaml.safe_load(path.read_text())
    register()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        start = OmegaConf.to_container(hydra_compose("config", preset_choices(doc)), resolve=False)
    restated = [
        f"{section}.{key}"
        for section, values in doc.items()
        if isinstance(values, dict) and section != "defaults"
        for key, value in values.items()
        if start.get(section, {}).get(key, object()) == value
    ]
    assert restated == [], f"{path.name} restates what it starts from: drop them"


def test_the_command_lines_default_is_the_schemas():
    cfg = compose()
    assert as_dict(cfg.model) == as_dict(FAMILIES["bnn"].schema(likelihood="regression"))
    assert as_dict(cfg.optim) == as_dict(OptimConfig())
    assert as_dict(cfg.trainer) == as_dict(TrainerConfig())
    assert as_dict(cfg.eval) == as_dict(EvalConfig())
    assert cfg.seed == 0
