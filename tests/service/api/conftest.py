"""Served models for the API's unit tests: small real checkpoints written to disk."""

from __future__ import annotations

import pytest

from models.inference.predictor import Predictor
from tests.support.checkpoints import write_model


@pytest.fixture
def checkpoint():
    """write_model(path, seed) -> path."""
    return write_model


@pytest.fixture
def predictor(tmp_path) -> Predictor:
    return Predictor.from_checkpoint(write_model(tmp_path / "m.safetensors", 0))
