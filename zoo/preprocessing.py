"""`preprocess_input` for each registered weight set, and the same as a layer."""

import keras

from keras_gn.serialization import register
from zoo.weights import get_entry
from zoo.weights import list_weights
from zoo.weights import resolve


def preprocess_input(x, weights, data_format=None):
    """Prepares RGB images with values in [0, 255] for the given weights.

    Applies the registered preprocessing of `weights` (a tag such as
    `"resnet50_gn.in1k_detectron"`): channel order (RGB or BGR), scaling,
    mean and std. For weights whose model normalizes its own inputs (the
    zoo's CIFAR weights) the images are returned unchanged.

    Args:
        x: float array or tensor of RGB images in [0, 255], channels on the
            last axis (or the first non-batch axis for channels-first).
        weights: a registered weights tag.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        A float32 tensor of the same shape.
    """
    prep = get_entry(weights).preprocessing
    if prep.inside_model:
        return keras.ops.cast(x, "float32")
    channels_last = (data_format or keras.config.image_data_format()) == "channels_last"
    return _normalize(x, prep.color, prep.scale, prep.mean, prep.std, channels_last)


def _normalize(x, color, scale, mean, std, channels_last, dtype="float32"):
    x = keras.ops.cast(x, "float32")
    axis = -1 if channels_last else -3
    if color == "BGR":
        x = keras.ops.flip(x, axis=axis)
    shape = [1] * len(x.shape)
    shape[axis] = 3
    mean = keras.ops.reshape(keras.ops.convert_to_tensor(mean, "float32"), shape)
    std = keras.ops.reshape(keras.ops.convert_to_tensor(std, "float32"), shape)
    return keras.ops.cast((x / scale - mean) / std, dtype)


@register
class Preprocessing(keras.layers.Layer):
    """Input preprocessing as a layer, so that a model takes raw RGB [0, 255].

    Computes what `preprocess_input` does: optional RGB -> BGR, division by
    `scale`, subtraction of `mean` and division by `std` (both in the output
    channel order). Serializable, so saved models keep their preprocessing.

    Args:
        color: `"RGB"` or `"BGR"`, the channel order the model expects.
            Defaults to `"RGB"`.
        scale: float, inputs are divided by it first. Defaults to `255.0`.
        mean: three floats. Defaults to the ImageNet mean.
        std: three floats. Defaults to the ImageNet std.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: RGB images with values in [0, 255], any float or int dtype.

    Input shape:
        `(batch, height, width, 3)`, or `(batch, 3, height, width)` for
        channels-first.

    Output shape:
        Same as the input, in the layer's compute dtype.

    Example:

    >>> layer = zoo.Preprocessing("RGB", 255.0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    >>> layer(np.full((1, 2, 2, 3), 255.0)).numpy()[0, 0, 0]
    array([1., 1., 1.], dtype=float32)
    """

    def __init__(self, color="RGB", scale=255.0, mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225), data_format=None, **kwargs):
        super().__init__(**kwargs)
        if color not in ("RGB", "BGR"):
            raise ValueError(f"color={color!r} is not one of 'RGB', 'BGR'.")
        self.data_format = data_format or keras.config.image_data_format()
        if self.data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                f"data_format={data_format!r} is not one of 'channels_last', 'channels_first'.")
        self.color, self.scale = color, float(scale)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def call(self, inputs):
        return _normalize(inputs, self.color, self.scale, self.mean, self.std,
                          channels_last=self.data_format == "channels_last", dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "color": self.color, "scale": self.scale,
                "mean": list(self.mean), "std": list(self.std), "data_format": self.data_format}

    @classmethod
    def for_weights(cls, tag, **kwargs):
        """The preprocessing of a registered weight set."""
        prep = get_entry(tag).preprocessing
        return cls(prep.color, prep.scale, prep.mean, prep.std, **kwargs)


def input_preprocessing(arch, weights, include_preprocessing):
    """The `Preprocessing` layer a builder puts after its input, or None.

    `include_preprocessing=None` follows the weights: a layer exactly when
    `weights` names registered weights trained with their normalization
    inside the model (`preprocessing.inside_model`, the zoo's CIFAR-10
    weights). `True` adds the preprocessing of any registered weights;
    `False` never adds one.
    """
    entry = resolve(arch, weights) if weights is not None else None
    if include_preprocessing is None:
        include_preprocessing = bool(entry and entry.preprocessing.inside_model)
    if not include_preprocessing:
        return None
    if entry is None:
        raise ValueError(
            f"include_preprocessing=True needs registered weights to take the preprocessing from, "
            f"but weights={weights!r}. Pass a tag of {list_weights(arch) or 'none registered'}, or "
            "put a zoo.Preprocessing layer before the model (input_tensor=...)."
        )
    return Preprocessing.for_weights(entry.tag, name="preprocessing")
