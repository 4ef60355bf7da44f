"""Differentiable transforms with physical axes; one module per family."""

from demux.transforms.base import Grid, Transform, power

__all__ = ["Grid", "Transform", "power"]
