"""Small tensor helpers shared by the methods and by the code `modetune export` writes (torch only)."""

from __future__ import annotations

from typing import Any

import torch


def first_tensor(value: Any) -> torch.Tensor | None:
    """A decoder layer's hidden states, whether it returns a tensor, a tuple, a list or a model output."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return getattr(value, "last_hidden_state", None) if not isinstance(value, (tuple, list)) else None
