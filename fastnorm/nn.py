"""Stateful normalization layers on NumPy arrays, with PyTorch's constructor arguments.

Each layer keeps its parameters, running buffers and the tensors its backward needs::

    bn = BatchNorm(64)                     # weight, bias, running_mean, running_var
    y = bn(x)                              # training mode: batch statistics, buffers updated
    dx = bn.backward(dy)                   # also sets bn.weight_grad, bn.bias_grad
    bn.eval(); y = bn(x)                   # running statistics, one fused pass

``state_dict()`` uses PyTorch's key names (``weight``, ``bias``, ``running_mean``,
``running_var``, ``num_batches_tracked``), so ``{k: v.numpy() for k, v in
torch_module.state_dict().items()}`` loads unchanged, and the other way round.

Running statistics conventions (``convention=``):

- ``"torch"`` (default): ``running = (1 - momentum) * running + momentum * batch`` with the
  unbiased batch variance ``var * n / (n - 1)``; default ``momentum=0.1``.
- ``"keras"`` / ``"onnx"``: ``momentum`` is the decay of the old value,
  ``running = momentum * running + (1 - momentum) * batch``, with the biased batch variance;
  default ``momentum`` 0.99 (Keras) or 0.9 (ONNX). Keras' default ``epsilon`` is 1e-3: pass
  ``eps=1e-3`` to match it.

``momentum=None`` means a cumulative average in either convention: after k training batches
the running statistics are the plain mean of the k batch statistics.
"""
from __future__ import annotations

import numbers
from collections import OrderedDict
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from fastnorm import functional as F

__all__ = ["BatchNorm", "InstanceNorm", "GroupNorm", "LayerNorm", "RMSNorm"]

ShapeLike = Union[int, Sequence[int]]

_CONVENTIONS = {"torch": 0.1, "keras": 0.99, "onnx": 0.9}
_DEFAULT: Any = object()  # "momentum not given": the convention picks it


def _to_numpy(value: Any, key: str) -> np.ndarray:
    """A state_dict value (NumPy array, PyTorch tensor, scalar) as a NumPy array."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as e:
        raise TypeError(f"state_dict[{key!r}] must be array-like: {e}") from None


class _Layer:
    """Parameters, buffers, train/eval, state_dict: what every layer shares."""

    _param_names: Tuple[str, ...] = ("weight", "bias")
    _buffer_names: Tuple[str, ...] = ()

    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"dtype must be a floating dtype, got {self.dtype}")
        self.training = True
        self.weight_grad: Optional[np.ndarray] = None
        self.bias_grad: Optional[np.ndarray] = None
        self._saved: Optional[tuple] = None

    # -- modes -----------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "_Layer":
        """Training mode (batch statistics, buffers updated); returns self."""
        if not isinstance(mode, bool):
            raise TypeError(f"mode must be a bool, got {type(mode).__name__}")
        self.training = mode
        return self

    def eval(self) -> "_Layer":
        """Inference mode (running statistics where the layer tracks them); returns self."""
        return self.train(False)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- parameters and state ---------------------------------------------------------------------
    def parameters(self) -> List[np.ndarray]:
        """The learnable arrays (weight, bias), in PyTorch's order; empty without affine."""
        return [p for _, p in self.named_parameters()]

    def named_parameters(self) -> List[Tuple[str, np.ndarray]]:
        """(name, array) pairs of the learnable arrays."""
        return [(n, getattr(self, n)) for n in self._param_names if getattr(self, n) is not None]

    def gradients(self) -> List[Optional[np.ndarray]]:
        """The gradients from the last backward, aligned with :meth:`parameters`."""
        return [getattr(self, f"{n}_grad") for n, _ in self.named_parameters()]

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameters then buffers under PyTorch's key names (the arrays themselves, not copies)."""
        sd: "OrderedDict[str, np.ndarray]" = OrderedDict(self.named_parameters())
        for n in self._buffer_names:
            buf = getattr(self, n)
            if buf is not None:
                sd[n] = buf
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Copy arrays (NumPy arrays or PyTorch tensors) into the parameters and buffers in place.

        Keys are PyTorch's. With ``strict``, missing or unexpected keys raise ValueError; a
        missing ``num_batches_tracked`` (checkpoints from before PyTorch 0.4.1) is allowed, as
        in PyTorch. Values keep this layer's dtypes.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict and k != "num_batches_tracked"]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"state_dict does not match {type(self).__name__}: missing keys "
                             f"{missing}, unexpected keys {unexpected}")
        values = {}
        for k, dst in own.items():
            if k not in state_dict:
                continue
            src = _to_numpy(state_dict[k], k)
            if src.shape != dst.shape:
                raise ValueError(f"state_dict[{k!r}] must have shape {dst.shape}, got {src.shape}")
            if src.dtype.kind not in "fiub" and k != "num_batches_tracked":
                raise TypeError(f"state_dict[{k!r}] must be a real array, got dtype {src.dtype}")
            values[k] = src
        for k, src in values.items():  # all checked first: a bad entry changes nothing
            np.copyto(own[k], src, casting="unsafe")

    # -- helpers ----------------------------------------------------------------------------------
    def _set_grads(self, dw: Optional[np.ndarray], db: Optional[np.ndarray]) -> None:
        w, b = getattr(self, "weight", None), getattr(self, "bias", None)
        self.weight_grad = None if w is None or dw is None else np.asarray(dw).astype(
            w.dtype, copy=False).reshape(w.shape)
        self.bias_grad = None if b is None or db is None else np.asarray(db).astype(
            b.dtype, copy=False).reshape(b.shape)

    def _pop_saved(self) -> tuple:
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward (or twice)")
        saved, self._saved = self._saved, None
        return saved

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:  # pragma: no cover - overridden
        return ""


def _check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
        raise ValueError(f"eps must be a positive real number, got {eps!r}")
    return float(eps)


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


class _RunningStatsNorm(_Layer):
    """Per-channel norms with optional running statistics: batch and instance norm."""

    _buffer_names = ("running_mean", "running_var", "num_batches_tracked")
    _op = ""

    def __init__(self, num_features: int, eps: float, momentum: Any, affine: bool,
                 track_running_stats: bool, layout: str, convention: str, dtype: Any) -> None:
        super().__init__(dtype)
        self.num_features = _check_count(num_features, "num_features")
        self.eps = _check_eps(eps)
        if not isinstance(convention, str) or convention.lower() not in _CONVENTIONS:
            raise ValueError(f"convention must be 'torch', 'keras' or 'onnx', got {convention!r}")
        self.convention = convention.lower()
        if momentum is _DEFAULT:
            momentum = _CONVENTIONS[self.convention]
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(
                momentum, numbers.Real) or not 0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum must be None or a float in [0, 1], got {momentum!r}")
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.layout = layout.upper() if isinstance(layout, str) else layout
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        C = self.num_features
        self.weight = np.ones(C, self.dtype) if self.affine else None
        self.bias = np.zeros(C, self.dtype) if self.affine else None
        if self.track_running_stats:
            self.running_mean = np.zeros(C, self.dtype)
            self.running_var = np.ones(C, self.dtype)
            self.num_batches_tracked = np.zeros((), np.int64)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.fill(0)
            self.running_var.fill(1)
            self.num_batches_tracked.fill(0)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            self.weight.fill(1)
            self.bias.fill(0)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
                f"layout={self.layout!r}, convention={self.convention!r}")

    def _check_input(self, x: Any) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"x must have at least 2 dimensions (N, C, ...), got shape {x.shape}")
        C = x.shape[1] if self.layout == "NCHW" else x.shape[-1]
        if C != self.num_features:
            axis = "1" if self.layout == "NCHW" else "-1"
            raise ValueError(f"x must have {self.num_features} channels at axis {axis} "
                             f"(layout {self.layout}), got shape {x.shape}")
        return x

    def _update_running(self, mean: np.ndarray, var: np.ndarray, correction: float) -> None:
        """Move the running buffers toward the batch statistics (float64 mean and biased var);
        ``correction`` = n / (n - 1) turns var unbiased in the torch convention."""
        self.num_batches_tracked += 1
        if self.momentum is None:  # cumulative average over the batches seen so far
            f = 1.0 / float(self.num_batches_tracked)
        elif self.convention == "torch":
            f = self.momentum
        else:  # keras / onnx: momentum is the decay of the old value
            f = 1.0 - self.momentum
        if self.convention == "torch":
            var = var * correction
        rm, rv = self.running_mean, self.running_var
        rm[...] = (1.0 - f) * rm.astype(np.float64) + f * mean
        rv[...] = (1.0 - f) * rv.astype(np.float64) + f * var

    def _running_rstd(self) -> Tuple[np.ndarray, np.ndarray]:
        mean = self.running_mean.astype(np.float64)
        return mean, 1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)

    def _eval_forward(self, x: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
        """Normalize with the running statistics, one fused pass; backward treats them as
        constants."""
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         training=False, eps=self.eps, layout=self.layout, out=out)
        mean, rstd = self._running_rstd()
        self._saved = ("eval", x, mean, rstd)
        return y

    def backward(self, dy: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Gradient of the last forward: returns dx (shaped like x) and sets ``weight_grad`` /
        ``bias_grad`` (shape (C,), None without affine)."""
        kind, x, mean, rstd = self._pop_saved()
        if kind == "eval":
            dx, dw, db = F.batch_norm_backward(dy, x, mean, rstd, self.weight, training=False,
                                               layout=self.layout, out=out)
        elif self._op == "batch":
            dx, dw, db = F.batch_norm_backward(dy, x, mean, rstd, self.weight,
                                               layout=self.layout, out=out)
        else:
            dx, dw, db = F.instance_norm_backward(dy, x, mean, rstd, self.weight,
                                                  layout=self.layout, out=out)
        self._set_grads(dw, db)
        return dx


class BatchNorm(_RunningStatsNorm):
    """Batch normalization layer: statistics per channel over all other axes.

    Like ``torch.nn.BatchNorm1d/2d/3d`` for any rank >= 2.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
    momentum : float or None, default 0.1 (0.99 for ``convention="keras"``, 0.9 for ``"onnx"``)
        Running statistics update factor; None is a cumulative average.
    affine : bool, default True
        Learnable ``weight`` (ones) and ``bias`` (zeros) of shape (C,).
    track_running_stats : bool, default True
        Keep ``running_mean`` (zeros), ``running_var`` (ones) and ``num_batches_tracked``; without
        them, batch statistics are used in eval mode too.
    layout : "NCHW" or "NHWC"
        x is (N, C, *spatial) or (N, *spatial, C).
    convention : "torch", "keras" or "onnx"
        Meaning of ``momentum`` and the variance that goes into ``running_var`` (module docstring).
    dtype : float dtype of the parameters and buffers, default float32
    """

    _op = "batch"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = _DEFAULT,
                 affine: bool = True, track_running_stats: bool = True, *,
                 layout: str = "NCHW", convention: str = "torch", dtype: Any = np.float32) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, layout,
                         convention, dtype)

    def forward(self, x: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """y shaped like x (N, C, *spatial) or (N, *spatial, C); ``out`` as in the functional API."""
        x = self._check_input(x)
        if self.training or not self.track_running_stats:
            y, mean, rstd = F.batch_norm_forward(x, self.weight, self.bias, eps=self.eps,
                                                 layout=self.layout, out=out)
            if self.training and self.track_running_stats and x.size:
                n = x.size // self.num_features
                self._update_running(mean, 1.0 / (rstd * rstd) - self.eps, n / (n - 1))
            self._saved = ("batch", x, mean, rstd)
            return y
        return self._eval_forward(x, out)


class InstanceNorm(_RunningStatsNorm):
    """Instance normalization layer: statistics per (sample, channel) over the spatial axes.

    Like ``torch.nn.InstanceNorm1d/2d/3d`` (batched input, rank >= 3), same defaults:
    ``affine=False``, ``track_running_stats=False``. With running statistics tracked, training
    moves them toward the batch average of the per-instance statistics and eval normalizes with
    them. Unlike PyTorch's InstanceNorm, which ignores ``momentum=None`` and never advances
    ``num_batches_tracked``, None is a cumulative average here as for :class:`BatchNorm`, and
    training batches are counted. Parameters as for :class:`BatchNorm`.
    """

    _op = "instance"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = _DEFAULT,
                 affine: bool = False, track_running_stats: bool = False, *,
                 layout: str = "NCHW", convention: str = "torch", dtype: Any = np.float32) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, layout,
                         convention, dtype)

    def forward(self, x: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """y shaped like x (N, C, *spatial) or (N, *spatial, C)."""
        x = self._check_input(x)
        if x.ndim < 3:
            raise ValueError(f"x must have at least 3 dimensions (N, C, *spatial), got shape "
                             f"{x.shape}")
        if self.training or not self.track_running_stats:
            S = x.size // max(x.shape[0] * self.num_features, 1)
            if self.training and S == 1:
                raise ValueError(f"Expected more than 1 spatial element when training, got x of "
                                 f"shape {x.shape}")
            y, mean, rstd = F.instance_norm_forward(x, self.weight, self.bias, eps=self.eps,
                                                    layout=self.layout, out=out)
            if self.training and self.track_running_stats and mean.shape[0] > 0:
                # the batch average of the per-instance statistics (PyTorch's definition)
                var = (1.0 / (rstd * rstd) - self.eps).mean(axis=0)
                self._update_running(mean.mean(axis=0), var, S / (S - 1) if S > 1 else 1.0)
            self._saved = ("input", x, mean, rstd)
            return y
        return self._eval_forward(x, out)


class GroupNorm(_Layer):
    """Group normalization layer: statistics per (sample, group of C/num_groups channels).

    Like ``torch.nn.GroupNorm(num_groups, num_channels, eps=1e-5, affine=True)``, plus
    ``layout``. x is (N, C, *spatial) or (N, *spatial, C); ``weight``/``bias`` are (C,).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, *, layout: str = "NCHW", dtype: Any = np.float32) -> None:
        super().__init__(dtype)
        self.num_groups = _check_count(num_groups, "num_groups")
        self.num_channels = _check_count(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups "
                             f"({num_groups})")
        self.eps = _check_eps(eps)
        self.affine = bool(affine)
        self.layout = layout.upper() if isinstance(layout, str) else layout
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        C = self.num_channels
        self.weight = np.ones(C, self.dtype) if self.affine else None
        self.bias = np.zeros(C, self.dtype) if self.affine else None

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"layout={self.layout!r}")

    def forward(self, x: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim >= 2:
            C = x.shape[1] if self.layout == "NCHW" else x.shape[-1]
            if C != self.num_channels:
                raise ValueError(f"x must have {self.num_channels} channels (layout "
                                 f"{self.layout}), got shape {x.shape}")
        y, mean, rstd = F.group_norm_forward(x, self.num_groups, self.weight, self.bias,
                                             eps=self.eps, layout=self.layout, out=out)
        self._saved = (x, mean, rstd)
        return y

    def backward(self, dy: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """dx shaped like x; sets ``weight_grad``/``bias_grad`` (C,)."""
        x, mean, rstd = self._pop_saved()
        dx, dw, db = F.group_norm_backward(dy, x, mean, rstd, self.num_groups, self.weight,
                                           layout=self.layout, out=out)
        self._set_grads(dw, db)
        return dx


def _normalized_shape(normalized_shape: ShapeLike) -> Tuple[int, ...]:
    if isinstance(normalized_shape, (numbers.Integral, np.integer)) and not isinstance(
            normalized_shape, bool):
        ns: Tuple[int, ...] = (int(normalized_shape),)
    else:
        try:
            ns = tuple(int(d) for d in normalized_shape)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise TypeError(f"normalized_shape must be an int or a tuple of ints, got "
                            f"{normalized_shape!r}") from None
    if not ns or any(d < 1 for d in ns):
        raise ValueError(f"normalized_shape must be non-empty positive ints, got {ns}")
    return ns


class LayerNorm(_Layer):
    """Layer normalization over the trailing ``normalized_shape`` dims.

    Like ``torch.nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True)``.
    ``forward(x, residual=r)`` normalizes ``x + r`` and returns ``(y, x + r)`` from one pass
    (pre-norm transformer block); its ``backward(dy, residual_grad=ds)`` takes the gradient
    reaching the sum through the residual stream and returns the gradient of x (equal to that
    of r).
    """

    def __init__(self, normalized_shape: ShapeLike, eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, *,
                 dtype: Any = np.float32) -> None:
        super().__init__(dtype)
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.eps = _check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        ns = self.normalized_shape
        self.weight = np.ones(ns, self.dtype) if self.elementwise_affine else None
        self.bias = np.zeros(ns, self.dtype) if self.elementwise_affine and bias else None

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")

    def forward(self, x: Any, residual: Any = None, out: Optional[np.ndarray] = None,
                residual_out: Optional[np.ndarray] = None
                ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """y shaped like x (*, *normalized_shape), or ``(y, x + residual)``."""
        res = F.layer_norm_forward(x, self.normalized_shape, self.weight, self.bias,
                                   eps=self.eps, residual=residual, out=out,
                                   residual_out=residual_out)
        if residual is None:
            y, mean, rstd = res
            self._saved = (np.asarray(x), mean, rstd)
            return y
        y, mean, rstd, s = res
        self._saved = (s, mean, rstd)
        return y, s

    def backward(self, dy: Any, residual_grad: Any = None,
                 out: Optional[np.ndarray] = None) -> np.ndarray:
        """dx shaped like x; sets ``weight_grad``/``bias_grad`` (normalized_shape)."""
        x, mean, rstd = self._pop_saved()
        dx, dw, db = F.layer_norm_backward(dy, x, mean, rstd, self.normalized_shape, self.weight,
                                           residual_grad=residual_grad, out=out)
        self._set_grads(dw, db)
        return dx


class RMSNorm(_Layer):
    """RMS normalization ``y = x / sqrt(mean(x^2) + eps) * weight`` over the trailing dims.

    Like ``torch.nn.RMSNorm(normalized_shape, eps=None, elementwise_affine=True)``;
    ``eps=None`` is the machine epsilon of x's dtype. ``residual=`` as for :class:`LayerNorm`.
    """

    _param_names = ("weight",)

    def __init__(self, normalized_shape: ShapeLike, eps: Optional[float] = None,
                 elementwise_affine: bool = True, *, dtype: Any = np.float32) -> None:
        super().__init__(dtype)
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.eps = None if eps is None else _check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.weight = np.ones(self.normalized_shape, self.dtype) if elementwise_affine else None

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")

    def forward(self, x: Any, residual: Any = None, out: Optional[np.ndarray] = None,
                residual_out: Optional[np.ndarray] = None
                ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """y shaped like x (*, *normalized_shape), or ``(y, x + residual)``."""
        res = F.rms_norm_forward(x, self.normalized_shape, self.weight, eps=self.eps,
                                 residual=residual, out=out, residual_out=residual_out)
        if residual is None:
            y, rstd = res
            self._saved = (np.asarray(x), rstd)
            return y
        y, rstd, s = res
        self._saved = (s, rstd)
        return y, s

    def backward(self, dy: Any, residual_grad: Any = None,
                 out: Optional[np.ndarray] = None) -> np.ndarray:
        """dx shaped like x; sets ``weight_grad`` (normalized_shape)."""
        x, rstd = self._pop_saved()
        dx, dw = F.rms_norm_backward(dy, x, rstd, self.normalized_shape, self.weight,
                                     residual_grad=residual_grad, out=out)
        self._set_grads(dw, None)
        return dx


Layer = Union[BatchNorm, InstanceNorm, GroupNorm, LayerNorm, RMSNorm]
