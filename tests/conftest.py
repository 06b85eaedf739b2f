"""Shared test setup."""

from __future__ import annotations

import torch

# Two PyTorch threads on a 2-core machine stall each other whenever anything else runs (CI, other
# tests); one thread keeps test timings stable.
torch.set_num_threads(1)
