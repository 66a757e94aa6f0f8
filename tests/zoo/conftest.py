"""Fixtures of the zoo tests: a temporary weights registry (the HTTP
server and the download cache are in tests/conftest.py)."""

import json

import pytest

from zoo import weights as weights_lib


@pytest.fixture
def registry_with(tmp_path, monkeypatch):
    """Replaces the registry by the given entries (dicts as in the JSON)."""

    def install(*entries):
        path = tmp_path / "registry.json"
        path.write_text(json.dumps(list(entries)))
        monkeypatch.setattr(weights_lib, "REGISTRY_FILE", path)
        weights_lib.registry.cache_clear()

    yield install
    weights_lib.registry.cache_clear()


def entry(tag, **fields):
    """A registry record with neutral defaults."""
    record = dict(
        tag=tag, format="keras", source="tests", license="none", dataset="imagenet-1k",
        classes=1000, metric={}, input_size=224, crop_pct=0.875,
        preprocessing=dict(color="RGB", scale=255.0, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]),
    )
    record.update(fields)
    return record
