"""A float64 NumPy reference of Group Normalization, written independently of
`keras_gn.ops` (channels moved to axis 1, NumPy's own mean and variance), for
every numerical test of the layer and of later fused kernels.
"""

import numpy as np


def _grouped(x, groups, axis, mask):
    """x as float64 [N, G, K] with the channels moved to axis 1, and the
    mask's weights broadcast the same way (ones without a mask)."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, 1)
    batch = x.shape[0]
    if mask is None:
        weights = np.ones_like(x)
    else:
        positions = x.shape[:1] + x.shape[2:]
        mask = np.asarray(mask, np.float64)
        mask = mask.reshape(mask.shape + (1,) * (len(positions) - mask.ndim))
        weights = np.broadcast_to(np.expand_dims(np.broadcast_to(mask, positions), 1), x.shape)
    return x, x.reshape(batch, groups, -1), weights.reshape(batch, groups, -1)


def _statistics(grouped, weights, epsilon):
    count = np.maximum(weights.sum(axis=2, keepdims=True), 1.0)
    mean = (grouped * weights).sum(axis=2, keepdims=True) / count
    variance = (weights * (grouped - mean) ** 2).sum(axis=2, keepdims=True) / count
    return count, mean, 1.0 / np.sqrt(variance + epsilon)


def _per_channel(values, ndim):
    return np.asarray(values, np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def _activation(z, activation):
    """act(z) and act'(z)."""
    if activation == "relu":
        return np.maximum(z, 0.0), (z > 0).astype(np.float64)
    if activation == "silu":
        s = 1.0 / (1.0 + np.exp(-z))
        return z * s, s * (1.0 + z * (1.0 - s))
    return z, np.ones_like(z)


def group_norm(x, gamma=None, beta=None, *, groups, axis=-1, epsilon=1e-5, mask=None, activation=None):
    """Group Normalization of `x` in float64 (Wu & He 2018, Eq. 1, 2, 6, 7).

    With a `mask` over the non-channel axes (batch first, trailing axes
    broadcast), the statistics use the kept positions only; every position
    is normalized.
    """
    moved, grouped, weights = _grouped(x, groups, axis, mask)
    _, mean, inv_std = _statistics(grouped, weights, epsilon)
    y = ((grouped - mean) * inv_std).reshape(moved.shape)
    if gamma is not None:
        y = y * _per_channel(gamma, y.ndim)
    if beta is not None:
        y = y + _per_channel(beta, y.ndim)
    return np.moveaxis(_activation(y, activation)[0], 1, axis)


def group_norm_grads(x, gamma, beta, dy, *, groups, axis=-1, epsilon=1e-5, mask=None, activation=None):
    """Gradients (dx, dgamma, dbeta) of `sum(group_norm(x, ...) * dy)` in
    float64, from the analytic backward pass (independent of autodiff)."""
    moved, grouped, weights = _grouped(x, groups, axis, mask)
    count, mean, inv_std = _statistics(grouped, weights, epsilon)
    xhat = ((grouped - mean) * inv_std).reshape(moved.shape)
    gamma = _per_channel(np.ones(moved.shape[1]) if gamma is None else gamma, moved.ndim)
    beta = _per_channel(np.zeros(moved.shape[1]) if beta is None else beta, moved.ndim)
    dz = np.moveaxis(np.asarray(dy, np.float64), axis, 1) * _activation(xhat * gamma + beta, activation)[1]
    reduce = (0,) + tuple(range(2, moved.ndim))
    dgamma, dbeta = (dz * xhat).sum(axis=reduce), dz.sum(axis=reduce)
    # d xhat_i / d x_j = inv_std * (delta_ij - w_j / count - xhat_i * xhat_j * w_j / count)
    g = (dz * gamma).reshape(grouped.shape)
    xhat = xhat.reshape(grouped.shape)
    dx = inv_std * (g - weights / count * g.sum(axis=2, keepdims=True)
                    - weights * xhat / count * (g * xhat).sum(axis=2, keepdims=True))
    return np.moveaxis(dx.reshape(moved.shape), 1, axis), dgamma, dbeta


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
