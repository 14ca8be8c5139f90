"""Image grids written as PNG (Pillow), atomically."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..files import atomic_write_bytes


def image_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (rows*(H+pad)+pad, nrow*(W+pad)+pad, C) uint8, white padding."""
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol_rows = math.ceil(n / nrow)
    grid = np.full((ncol_rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    pixels = to_uint8(x)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = pixels[i]
    return grid


def save_png(array: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Save an (H, W, C) uint8 array as PNG, upscaled by `scale` (nearest neighbour)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, png_bytes(array, scale))
    return path


def png_bytes(array: np.ndarray, scale: int = 1) -> bytes:
    """An (H, W, C) uint8 array as the bytes of a PNG file, upscaled by `scale` (nearest neighbour)."""
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images (N, C, H, W) in [0, 1] -> (N, H, W, C) uint8."""
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
