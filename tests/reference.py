"""A float64 NumPy reference of Group Normalization, written independently of
`keras_gn.ops` (channels moved to axis 1, NumPy's own mean and variance), for
every numerical test of the layer and of later fused kernels.
"""

import numpy as np


def group_norm(x, gamma=None, beta=None, *, groups, axis=-1, epsilon=1e-5):
    """Group Normalization of `x` in float64 (Wu & He 2018, Eq. 1, 2, 6, 7)."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, 1)
    batch, channels = x.shape[:2]
    grouped = x.reshape(batch, groups, -1)
    mean = grouped.mean(axis=2, keepdims=True)
    variance = grouped.var(axis=2, keepdims=True)
    y = ((grouped - mean) / np.sqrt(variance + epsilon)).reshape(x.shape)
    param_shape = (1, channels) + (1,) * (x.ndim - 2)
    if gamma is not None:
        y = y * np.asarray(gamma, np.float64).reshape(param_shape)
    if beta is not None:
        y = y + np.asarray(beta, np.float64).reshape(param_shape)
    return np.moveaxis(y, 1, axis)


def standardize_kernel(kernel, epsilon=1e-10):
    """Weight Standardization (Qiao et al. 2019) of a Keras convolution kernel
    `(*spatial, in_channels, filters)` in float64: each filter minus its mean,
    over the square root of its population variance plus `epsilon`."""
    w = np.asarray(kernel, np.float64)
    flat = w.reshape(-1, w.shape[-1])
    flat = (flat - flat.mean(axis=0)) / np.sqrt(flat.var(axis=0) + epsilon)
    return flat.reshape(w.shape)


def conv2d(x, kernel, padding="valid"):
    """Stride-1 2D cross-correlation of channels-last `x` with `kernel`
    `(kh, kw, in, out)` in float64; `padding="same"` pads odd kernels by
    `k // 2` on each side."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    kh, kw = kernel.shape[:2]
    if padding == "same":
        x = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel)
