"""Keras layers of keras_gn."""

from keras_gn.layers.channel_affine import ChannelAffine
from keras_gn.layers.group_normalization import GroupNormalization
from keras_gn.layers.weight_standardized_conv import WeightStandardizedConv2D
from keras_gn.layers.weight_standardized_conv import standardize_kernel

__all__ = ["ChannelAffine", "GroupNormalization", "WeightStandardizedConv2D", "standardize_kernel"]
