"""Seeded, stratified subsets of a split (calibration sets, quick evals) and their hashes."""
from __future__ import annotations

import hashlib

import numpy as np

from fer_edge.errors import DataError


def _as_numpy(labels) -> np.ndarray:
    if hasattr(labels, "detach"):  # a torch tensor
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {tuple(arr.shape)}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _allocate(counts: np.ndarray, n: int) -> np.ndarray:
    """How many to take per class: proportional (largest remainder), >= 1 per present class when n allows."""
    total = int(counts.sum())
    quota = counts * (n / total)
    alloc = np.floor(quota).astype(np.int64)
    rest = n - int(alloc.sum())
    if rest > 0:
        frac = quota - alloc
        # largest fractional part first; ties go to the larger class, then the lower class index
        order = sorted(np.flatnonzero(counts), key=lambda c: (-frac[c], -counts[c], c))
        for c in order[:rest]:
            alloc[c] += 1
    present = np.flatnonzero(counts)
    if n >= len(present):
        for c in present:
            if alloc[c] == 0:
                # take one from the class furthest above its quota (it has at least 2)
                donors = [d for d in present if alloc[d] > 1]
                d = max(donors, key=lambda d: (alloc[d] - quota[d], alloc[d], -d))
                alloc[d] -= 1
                alloc[c] = 1
    return alloc


def stratified_indices(labels, n: int, seed: int) -> np.ndarray:
    """``n`` indices into ``labels`` sampled without replacement, stratified by class.

    Each class gets a share proportional to its size (largest-remainder rounding), and
    every class present gets at least one index when ``n`` is at least the number of
    classes present. The draw depends only on ``labels``, ``n`` and ``seed``. The result
    is sorted int64; ``n >= len(labels)`` returns every index.
    """
    lab = _as_numpy(labels)
    n = int(n)
    if n < 0:
        raise DataError(f"cannot sample a negative number of indices ({n})")
    if n >= len(lab):
        return np.arange(len(lab), dtype=np.int64)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if lab.min() < 0:
        raise DataError(f"labels must be >= 0, found {int(lab.min())}")
    counts = np.bincount(lab)
    alloc = _allocate(counts, n)
    rng = np.random.default_rng(seed)
    parts = []
    for c in np.flatnonzero(alloc):
        members = np.flatnonzero(lab == c)
        parts.append(rng.choice(members, size=int(alloc[c]), replace=False))
    return np.sort(np.concatenate(parts)).astype(np.int64)


def index_hash(indices) -> str:
    """SHA-256 hex digest of ``indices`` as little-endian int64 (order matters; records name subsets by it)."""
    if hasattr(indices, "detach"):
        indices = indices.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(indices, dtype="<i8").reshape(-1))
    return hashlib.sha256(arr.tobytes()).hexdigest()
