"""Keras layers of keras_gn."""

from keras_gn.layers.channel_affine import ChannelAffine
from keras_gn.layers.group_normalization import GroupNormalization

__all__ = ["ChannelAffine", "GroupNormalization"]
