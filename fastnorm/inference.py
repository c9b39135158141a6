"""Inference helpers: folding a batch norm into the convolution or linear layer before it."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

__all__ = ["fold_batch_norm"]

# axis of the output channels in each weight layout, and with transpose=True (the O and I
# roles swapped: ConvTranspose weights, or a linear weight stored (in, out) for x @ W)
_OUT_AXIS = {"OIHW": (0, 1), "OHWI": (0, -1), "HWIO": (-1, -2)}


def _vector(a: Any, name: str, n: int, fill: Optional[float]) -> np.ndarray:
    if a is None:
        if fill is None:
            raise TypeError(f"{name} must be an array of shape ({n},), got None")
        return np.full(n, fill, dtype=np.float64)
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real array, got dtype {a.dtype}")
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one value per output channel), "
                         f"got {a.shape}")
    return a.astype(np.float64)


def fold_batch_norm(weight: Any, bias: Any, running_mean: Any, running_var: Any,
                    gamma: Any = None, beta: Any = None, *, eps: float = 1e-5,
                    transpose: bool = False,
                    layout: str = "OIHW") -> Tuple[np.ndarray, np.ndarray]:
    """Fold an inference-mode batch norm into the preceding convolution or linear layer.

    ``bn(conv(x, weight) + bias)`` equals ``conv(x, weight') + bias'`` with, per output
    channel o, ``s = gamma / sqrt(running_var + eps)``, ``weight'[o] = weight[o] * s`` and
    ``bias' = (bias - running_mean) * s + beta``.

    Parameters
    ----------
    weight : ndarray
        Convolution weight in ``layout`` (any number of spatial dims, grouped convolutions
        included), or a linear weight (out, in).
    bias : ndarray (O,) or None
        The layer's bias; None means zeros.
    running_mean, running_var : ndarray (O,)
        The batch norm's running statistics.
    gamma, beta : ndarray (O,) or None
        The batch norm's weight and bias; None means ones and zeros (``affine=False``).
    eps : float
        The batch norm's eps.
    transpose : bool
        The weight's output channels sit where its layout has the input channels: PyTorch
        ``ConvTranspose`` weights (I, O/groups, kH, kW) (ungrouped only, as then that axis has
        every output channel), TensorFlow ``conv2d_transpose`` filters (H, W, O, I) with
        ``layout="HWIO"``, or a linear weight stored (in, out).
    layout : "OIHW", "OHWI" or "HWIO"
        Output channels at axis 0 (PyTorch ``OIHW`` and linear ``(out, in)``, and
        channels-last ``OHWI``) or last (TensorFlow/Keras ``HWIO``).

    Returns
    -------
    weight, bias : the folded weight (same shape, layout and dtype as ``weight``) and bias (O,)
        in the weight's dtype. Computed in float64.
    """
    w = np.asarray(weight)
    if w.dtype.kind != "f":
        raise TypeError(f"weight must be a floating array, got dtype {w.dtype}")
    if w.ndim < 2:
        raise ValueError(f"weight must have at least 2 dimensions, got shape {w.shape}")
    if not isinstance(layout, str) or layout.upper() not in _OUT_AXIS:
        raise ValueError(f"layout must be 'OIHW', 'OHWI' or 'HWIO', got {layout!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or eps < 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    axis = _OUT_AXIS[layout.upper()][1 if transpose else 0] % w.ndim
    O = w.shape[axis]
    mean = _vector(running_mean, "running_mean", O, None)
    var = _vector(running_var, "running_var", O, None)
    g = _vector(gamma, "gamma", O, 1.0)
    b0 = _vector(bias, "bias", O, 0.0)
    be = _vector(beta, "beta", O, 0.0)
    if np.any(var + eps <= 0):
        raise ValueError("running_var + eps must be > 0")
    scale = g / np.sqrt(var + float(eps))
    shape = [1] * w.ndim
    shape[axis] = O
    w_folded = (w.astype(np.float64) * scale.reshape(shape)).astype(w.dtype)
    b_folded = ((b0 - mean) * scale + be).astype(w.dtype)
    return w_folded, b_folded
