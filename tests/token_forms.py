"""Input forms with 8-byte and 4-byte ids that tests hand to the token reader and the index."""

from __future__ import annotations

import array
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

WIDE_AND_NARROW: list[Callable[[list[int]], Any]] = [
    list,
    lambda ids: array.array("q", ids),
    lambda ids: array.array("i", ids),
    lambda ids: np.array(ids, dtype=np.int64),
    lambda ids: torch.tensor(ids, dtype=torch.int64),
]
"""A Python list, array('q') and array('i'), an int64 NumPy array and an int64 tensor."""
