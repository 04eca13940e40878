"""Vectorised draws from many small categorical distributions at once (one per row)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class StackedChoice:
    """Distributions laid end to end; row i draws an item from distribution `which[i]`.

    Distribution d's cumulative weights are shifted to (d, d + 1], so one `searchsorted` over all
    of them serves every row: no Python loop per row or per distribution.
    """

    def __init__(self, weights: Sequence[np.ndarray]) -> None:
        sizes = np.array([len(w) for w in weights], dtype=np.int64)
        if (sizes == 0).any():
            raise ValueError("every distribution needs at least one item")
        shifted = [np.cumsum(w) / np.sum(w) + d for d, w in enumerate(weights)]
        self._keys = np.concatenate(shifted)
        self._keys[np.cumsum(sizes) - 1] = np.arange(len(weights)) + 1.0  # exact bounds despite rounding

    def draw(self, which: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The flat index (into the concatenated items) of one draw per row."""
        targets = which + rng.random(len(which))
        return np.searchsorted(self._keys, targets, side="right")


def choose_rows(weights: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` independent draws of an index from one weight vector."""
    cumulative = np.cumsum(weights) / np.sum(weights)
    return np.minimum(np.searchsorted(cumulative, rng.random(size), side="right"), len(weights) - 1)


def zipf_weights(count: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf popularity (1/rank^s) with ranks shuffled, so the popular items are spread out."""
    ranks = rng.permutation(count) + 1
    return 1.0 / ranks.astype(np.float64) ** exponent


def objects(items: Sequence[object]) -> np.ndarray:
    """A 1-d object array of `items` as they are (numpy would turn a list of lists into 2-d)."""
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        array[index] = item
    return array
