# Type stubs for fastnorm.functional. Shapes: x is (N, C, *spatial) for layout "NCHW" or
# (N, *spatial, C) for "NHWC"; mean/rstd are float64 of the shapes given per function.
from typing import Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.generic]
Layout = Literal["NCHW", "NHWC", "nchw", "nhwc"]
Activation = Optional[Literal["relu", "silu", "gelu", "none"]]
Shape = Union[int, Sequence[int]]
F64 = NDArray[np.float64]

__all__: list[str]

# batch norm: mean, rstd (C,)
def batch_norm_forward(x: ArrayLike, weight: Optional[ArrayLike] = None,
                       bias: Optional[ArrayLike] = None, *, eps: float = 1e-5,
                       layout: Layout = "NCHW",
                       out: Optional[Array] = None) -> Tuple[Array, F64, F64]: ...
def batch_norm_backward(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, rstd: ArrayLike,
                        weight: Optional[ArrayLike] = None, *, training: bool = True,
                        layout: Layout = "NCHW",
                        out: Optional[Array] = None) -> Tuple[Array, Array, Array]: ...
def batch_norm(x: ArrayLike, running_mean: Optional[Array] = None,
               running_var: Optional[Array] = None, weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, *, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, layout: Layout = "NCHW",
               activation: Activation = None, out: Optional[Array] = None) -> Array: ...

# instance norm: mean, rstd (N, C)
def instance_norm_forward(x: ArrayLike, weight: Optional[ArrayLike] = None,
                          bias: Optional[ArrayLike] = None, *, eps: float = 1e-5,
                          layout: Layout = "NCHW",
                          out: Optional[Array] = None) -> Tuple[Array, F64, F64]: ...
def instance_norm_backward(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, rstd: ArrayLike,
                           weight: Optional[ArrayLike] = None, *, layout: Layout = "NCHW",
                           out: Optional[Array] = None) -> Tuple[Array, Array, Array]: ...
def instance_norm(x: ArrayLike, running_mean: Optional[Array] = None,
                  running_var: Optional[Array] = None, weight: Optional[ArrayLike] = None,
                  bias: Optional[ArrayLike] = None, use_input_stats: bool = True,
                  momentum: float = 0.1, *, eps: float = 1e-5, layout: Layout = "NCHW",
                  activation: Activation = None, out: Optional[Array] = None) -> Array: ...

# group norm: mean, rstd (N, num_groups)
def group_norm_forward(x: ArrayLike, num_groups: int, weight: Optional[ArrayLike] = None,
                       bias: Optional[ArrayLike] = None, *, eps: float = 1e-5,
                       layout: Layout = "NCHW",
                       out: Optional[Array] = None) -> Tuple[Array, F64, F64]: ...
def group_norm_backward(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, rstd: ArrayLike,
                        num_groups: int, weight: Optional[ArrayLike] = None, *,
                        layout: Layout = "NCHW",
                        out: Optional[Array] = None) -> Tuple[Array, Array, Array]: ...
def group_norm(x: ArrayLike, num_groups: int, weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, *, eps: float = 1e-5,
               layout: Layout = "NCHW", activation: Activation = None,
               out: Optional[Array] = None) -> Array: ...

# layer norm over the trailing normalized_shape: mean, rstd x.shape[:-len(normalized_shape)]
@overload
def layer_norm_forward(x: ArrayLike, normalized_shape: Shape,
                       weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, *,
                       eps: float = 1e-5, residual: None = None, out: Optional[Array] = None,
                       residual_out: Optional[Array] = None) -> Tuple[Array, F64, F64]: ...
@overload
def layer_norm_forward(x: ArrayLike, normalized_shape: Shape,
                       weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None, *,
                       eps: float = 1e-5, residual: ArrayLike, out: Optional[Array] = None,
                       residual_out: Optional[Array] = None
                       ) -> Tuple[Array, F64, F64, Array]: ...
def layer_norm_backward(dy: ArrayLike, x: ArrayLike, mean: ArrayLike, rstd: ArrayLike,
                        normalized_shape: Shape, weight: Optional[ArrayLike] = None, *,
                        residual_grad: Optional[ArrayLike] = None,
                        out: Optional[Array] = None) -> Tuple[Array, Array, Array]: ...
@overload
def layer_norm(x: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, *, eps: float = 1e-5, residual: None = None,
               activation: Activation = None, out: Optional[Array] = None,
               residual_out: Optional[Array] = None) -> Array: ...
@overload
def layer_norm(x: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, *, eps: float = 1e-5, residual: ArrayLike,
               activation: Activation = None, out: Optional[Array] = None,
               residual_out: Optional[Array] = None) -> Tuple[Array, Array]: ...

# RMS norm: rstd x.shape[:-len(normalized_shape)]; eps=None is the dtype's machine epsilon
@overload
def rms_norm_forward(x: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = None,
                     *, eps: Optional[float] = None, residual: None = None,
                     out: Optional[Array] = None,
                     residual_out: Optional[Array] = None) -> Tuple[Array, F64]: ...
@overload
def rms_norm_forward(x: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = None,
                     *, eps: Optional[float] = None, residual: ArrayLike,
                     out: Optional[Array] = None,
                     residual_out: Optional[Array] = None) -> Tuple[Array, F64, Array]: ...
def rms_norm_backward(dy: ArrayLike, x: ArrayLike, rstd: ArrayLike, normalized_shape: Shape,
                      weight: Optional[ArrayLike] = None, *,
                      residual_grad: Optional[ArrayLike] = None,
                      out: Optional[Array] = None) -> Tuple[Array, Array]: ...
@overload
def rms_norm(x: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = None, *,
             eps: Optional[float] = None, residual: None = None, activation: Activation = None,
             out: Optional[Array] = None, residual_out: Optional[Array] = None) -> Array: ...
@overload
def rms_norm(x: ArrayLike, normalized_shape: Shape, weight: Optional[ArrayLike] = None, *,
             eps: Optional[float] = None, residual: ArrayLike, activation: Activation = None,
             out: Optional[Array] = None,
             residual_out: Optional[Array] = None) -> Tuple[Array, Array]: ...
