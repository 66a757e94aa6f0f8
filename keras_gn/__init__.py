"""keras_gn: Group Normalization for Keras 3 on TensorFlow.

Public API:
    GroupNormalization: the layer (Wu & He, 2018).
    ChannelAffine: fixed per-channel affine, what `freeze_bn` puts in place of BN.
    WeightStandardizedConv2D: Conv2D with Weight Standardization (GN+WS).
    convert_bn_to_gn: rewrite every BatchNormalization of a model into GN.
    freeze_bn: rewrite every BatchNormalization into its frozen affine (BN*).
    ConversionReport: what `convert_bn_to_gn(..., return_report=True)` returns.
"""

import keras

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "keras_gn runs on the TensorFlow backend of Keras 3, but the active "
        f"backend is '{keras.backend.backend()}'. Set KERAS_BACKEND=tensorflow "
        "before importing keras."
    )

from keras_gn.convert import ConversionReport
from keras_gn.convert import convert_bn_to_gn
from keras_gn.freeze import freeze_bn
from keras_gn.layers import ChannelAffine
from keras_gn.layers import GroupNormalization
from keras_gn.layers import WeightStandardizedConv2D

__version__ = "0.1.0"

__all__ = [
    "ChannelAffine",
    "ConversionReport",
    "GroupNormalization",
    "WeightStandardizedConv2D",
    "convert_bn_to_gn",
    "freeze_bn",
]
