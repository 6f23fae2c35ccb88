"""FER2013 data: the Kaggle CSV and image folders, decoded to uint8 N x 48 x 48 with a cache.

See :mod:`fer_edge.data.loading` for the accepted forms, split aliases and the cache.
"""
from __future__ import annotations

from fer_edge.data.loading import (
    SPLIT_ALIASES,
    FerSplit,
    cache_dir,
    default_train_split,
    default_val_split,
    list_splits,
    load_split,
)
from fer_edge.data.sampling import index_hash, stratified_indices

__all__ = [
    "FerSplit",
    "SPLIT_ALIASES",
    "cache_dir",
    "default_train_split",
    "default_val_split",
    "index_hash",
    "list_splits",
    "load_split",
    "stratified_indices",
]
