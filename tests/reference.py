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
