"""The normalization layer of every zoo model, chosen by name.

Models take `norm="gn" | "bn"` instead of hard-coding a layer, so BN-vs-GN
comparisons run the same architecture code.
"""

import keras

import keras_gn
from keras_gn.convert import choose_groups

NORMS = ("gn", "bn")


def check_norm(norm):
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not one of {NORMS}.")


def norm_layer(norm, channels, *, groups=32, group_size=None, epsilon=1e-5, zero_init=False,
               axis=-1, sync_bn=False, min_group_size=2, name=None):
    """A normalization layer for a tensor with `channels` channels.

    Args:
        norm: "gn" (keras_gn.GroupNormalization) or "bn"
            (keras.layers.BatchNormalization, momentum 0.9 as in the paper's
            Caffe2/PyTorch setting).
        channels: int, the channel count of the normalized tensor.
        groups: int, GN groups where they divide `channels` with at least 2
            channels per group; elsewhere the coarser grouping of
            `keras_gn.convert.choose_groups` (CIFAR's 16 channels get 8
            groups). Defaults to `32`, the paper's.
        group_size: int or None, GN channels per group instead of `groups`.
        epsilon: float. Defaults to `1e-5`.
        zero_init: bool, start gamma at 0 (the last norm of a residual
            branch, so that each block starts as the identity).
        axis: int, the channel axis.
        sync_bn: bool, BN statistics over the global batch of all replicas
            instead of per replica (the paper's BN is per replica).
        min_group_size: int, fewest channels per GN group when choosing by
            `groups`. Defaults to `2`; `1` uses `groups` wherever it
            divides `channels` (timm's GroupNorm does, e.g. 32 groups of one
            channel in `resnetv2_50d_gn`'s stem).
        name: layer name.
    """
    check_norm(norm)
    gamma_initializer = "zeros" if zero_init else "ones"
    if norm == "bn":
        return keras.layers.BatchNormalization(
            axis=axis, momentum=0.9, epsilon=epsilon, gamma_initializer=gamma_initializer,
            synchronized=sync_bn, name=name,
        )
    return keras_gn.GroupNormalization(
        groups=choose_groups(channels, groups, group_size, min_group_size),
        axis=axis,
        epsilon=epsilon,
        gamma_initializer=gamma_initializer,
        name=name,
    )
