"""Learned per-group offsets, read from a safetensors file (never pickle)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from demux.errors import InputError


def load_offsets(path: str | Path, *, key: str, n_groups: int, stage: str | None = None) -> Tensor:
    """Read a ``(n_groups,)`` float tensor named ``key`` from a safetensors file.

    With ``stage``, the tensor ``"<stage>.<key>"`` is read when the file has it (the
    layout ``demux train`` writes: one file for every source of every stage), else ``key``.

    Raises:
        InputError: the file is missing, not safetensors, lacks the key or has the wrong shape.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such learned-parameters file")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(path, f"not a safetensors file ({error})") from None
    if stage is not None and f"{stage}.{key}" in tensors:
        key = f"{stage}.{key}"
    if key not in tensors:
        raise InputError(path, f"has no tensor '{key}' (has: {', '.join(sorted(tensors)) or 'none'})")
    value = tensors[key].to(torch.get_default_dtype())
    if value.shape != (n_groups,):
        raise InputError(path, f"tensor '{key}' has shape {tuple(value.shape)}, expected ({n_groups},)")
    return value
