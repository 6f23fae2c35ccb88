"""Shared fixtures: tiny synthetic data sets in both formats, and the optional real FER2013."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fer_edge.data.synthetic import make_synthetic, write_csv, write_folder

SHARED_FER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the decoded-data cache of tests out of the user's cache dir."""
    monkeypatch.setenv("FER_EDGE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def synthetic_arrays():
    return {"Training": make_synthetic(40, seed=0), "PublicTest": make_synthetic(12, seed=1)}


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory, synthetic_arrays) -> Path:
    """A gzipped Kaggle-format CSV with Training (280 rows) and PublicTest (84 rows)."""
    return write_csv(tmp_path_factory.mktemp("csv") / "fer2013.csv.gz", synthetic_arrays)


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory, synthetic_arrays) -> Path:
    """An image-folder data set: root/{train,val}/<class>/*.png."""
    return write_folder(
        tmp_path_factory.mktemp("folder"),
        {"train": synthetic_arrays["Training"], "val": synthetic_arrays["PublicTest"]},
    )


@pytest.fixture(scope="session")
def shared_fer2013() -> Path:
    """The real FER2013 beside the checkout; tests using it skip when it is absent."""
    root = Path(os.environ.get("FER_EDGE_SHARED_DATA", SHARED_FER))
    if not (root / "fer2013.csv.gz").is_file():
        pytest.skip(f"real FER2013 not found at {root}")
    return root
