"""One harness for every keras_gn layer: the checks Keras runs on its own
layers (config round trip, serialization, weight counts, a training step,
a mixed-precision rerun), written once and reused by the layer tests."""

import numpy as np
import keras

from keras_gn.serialization import PACKAGE


def check_layer(layer_cls, init_kwargs, input_shape, num_trainable_weights, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=input_shape).astype("float32")

    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    y = layer(x)
    assert tuple(y.shape) == tuple(input_shape)
    assert tuple(layer.compute_output_shape(input_shape)) == tuple(input_shape)
    # Building must not rewrite constructor arguments.
    assert layer.get_config() == config
    assert len(layer.trainable_weights) == num_trainable_weights
    assert len(layer.non_trainable_weights) == 0

    # Config round trip, with the weights moved over.
    for weight in layer.weights:
        weight.assign(rng.normal(size=weight.shape))
    clone = layer_cls.from_config(config)
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x), layer(x), rtol=1e-6, atol=1e-6)
    assert clone.get_config() == config

    # Registered serialization under the package name.
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"{PACKAGE}>{layer_cls.__name__}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is layer_cls
    assert restored.get_config() == config

    # One training step moves the trainable weights.
    model = keras.Sequential(
        [keras.Input(input_shape[1:]), layer_cls(**init_kwargs), keras.layers.Dense(3)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [w.numpy().copy() for w in model.layers[0].trainable_weights]
    target = rng.normal(size=input_shape[:-1] + (3,)).astype("float32")
    loss = model.train_on_batch(x, target)
    assert np.isfinite(loss)
    after = [w.numpy() for w in model.layers[0].trainable_weights]
    assert all(not np.allclose(b, a) for b, a in zip(before, after))

    # Mixed precision: float32 variables, float16 outputs close to float32.
    mixed = layer_cls(**init_kwargs, dtype="mixed_float16")
    y16 = mixed(x)
    assert y16.dtype == "float16"
    assert all(w.dtype == "float32" for w in mixed.weights)
    plain = layer_cls(**init_kwargs)
    np.testing.assert_allclose(
        np.asarray(y16, np.float32), plain(x), rtol=0, atol=1e-2
    )
