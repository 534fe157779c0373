"""Shared test set-up: the offline data mirror and small helpers.

Tests use the offline mirror in ../shared/data (next to the repository) unless GPTDIST_DATA_MIRROR
already points elsewhere. tiktoken's cache is seeded from it into a per-session temporary folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

_default_mirror = REPO.parent / "shared" / "data"
if not os.environ.get("GPTDIST_DATA_MIRROR") and _default_mirror.is_dir():
    os.environ["GPTDIST_DATA_MIRROR"] = str(_default_mirror)

# Keep every test process off the network and quiet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def mirror() -> Path:
    path = os.environ.get("GPTDIST_DATA_MIRROR")
    if not path or not Path(path).is_dir():
        pytest.fail("no offline data mirror: set GPTDIST_DATA_MIRROR or place shared/data next to the repo")
    return Path(path)


@pytest.fixture(scope="session", autouse=True)
def _tiktoken_cache(tmp_path_factory):
    """A private tiktoken cache per session, so tests prove the mirror seeding works."""
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        os.environ["TIKTOKEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("tiktoken"))
    yield
