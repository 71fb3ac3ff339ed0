"""Shared fixtures: real Speech Commands folders when present, synthetic audio always."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


def shared_data_dir() -> Path:
    """$KWS_DATA_DIR, else ../shared/data beside the repo."""
    return Path(os.environ.get("KWS_DATA_DIR", REPO.parent / "shared" / "data"))


def _need(sub: str) -> Path:
    path = shared_data_dir() / sub
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set KWS_DATA_DIR)")
    return path


#: the fixtures that read the real clips; a test that uses one is marked ``data``
DATA_FIXTURES = {"dev_root", "v001_root"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the real clips, directly or through a fixture, so that
    ``-m data`` and ``-m "not data"`` select by what a test reads, not by hand-kept marks."""
    for item in items:
        if DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.data)


@pytest.fixture(scope="session")
def dev_root() -> Path:
    """The 12-class v0.02 test-set layout (3,619 real clips)."""
    return _need("speech_commands_test_set_v0.02_dev")


@pytest.fixture(scope="session")
def v001_root() -> Path:
    """A sample of the v0.01 full-archive layout, with _background_noise_."""
    return _need("speech_commands_v0.01_sample")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def tone(freq: float = 440.0, seconds: float = 1.0, rate: int = 16000, amp: float = 0.5):
    """A sine tone as float32, the simplest audio a test can make for itself."""
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
