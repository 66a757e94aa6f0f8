"""Saving and exporting models that use GroupNormalization (and GN+WS's
WeightStandardizedConv2D): `.keras` files
loaded in a fresh Python process, SavedModel via `model.export()`, and TFLite
with builtin ops only."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import keras
import tensorflow as tf

import keras_gn


def conv_gn_conv_model():
    """Conv -> GN -> Conv -> GN, the pattern TFLite users report failing; the
    second convolution weight-standardized (GN+WS)."""
    inputs = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(32, 3, padding="same")(inputs)
    x = keras_gn.GroupNormalization(groups=8)(x)
    x = keras.layers.ReLU()(x)
    x = keras_gn.WeightStandardizedConv2D(16, 3)(x)
    x = keras_gn.GroupNormalization(group_size=4, epsilon=1e-3)(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(0)
    for weight in model.weights:
        weight.assign(rng.normal(size=weight.shape))
    return model


def run_fresh_python(code, tmp_path):
    """Runs `code` in a new interpreter; returns the array it saved."""
    out = tmp_path / "out.npy"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code).format(tmp=str(tmp_path), out=str(out))],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out)


@pytest.fixture
def data():
    return np.random.default_rng(1).normal(size=(3, 12, 12, 3)).astype("float32")


def test_keras_file_loads_in_a_fresh_process_without_custom_objects(tmp_path, data):
    model = conv_gn_conv_model()
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", data)
    loaded = run_fresh_python(
        """
        import numpy as np, keras
        import keras_gn  # registers the "keras_gn>" classes; no custom_objects
        model = keras.saving.load_model("{tmp}/model.keras")
        assert type(model.layers[2]).__name__ == "GroupNormalization"
        assert model.layers[5].get_config()["group_size"] == 4
        assert type(model.layers[4]).__name__ == "WeightStandardizedConv2D"
        np.save("{out}", model.predict(np.load("{tmp}/x.npy"), verbose=0))
        """,
        tmp_path,
    )
    np.testing.assert_allclose(loaded, model(data), rtol=1e-5, atol=1e-5)


def test_mixed_precision_model_round_trips(tmp_path):
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = conv_gn_conv_model()
    path = tmp_path / "mixed.keras"
    model.save(path)
    keras.config.set_dtype_policy("float32")
    loaded = keras.saving.load_model(path)
    gn = loaded.layers[2]
    assert gn.dtype_policy.name == "mixed_bfloat16" and gn.gamma.dtype == "float32"


def test_savedmodel_export_serves_without_keras_gn(tmp_path, data):
    model = conv_gn_conv_model()
    model.export(str(tmp_path / "saved_model"), verbose=False)
    np.save(tmp_path / "x.npy", data)
    served = run_fresh_python(
        """
        import numpy as np, tensorflow as tf
        reloaded = tf.saved_model.load("{tmp}/saved_model")
        np.save("{out}", reloaded.serve(tf.constant(np.load("{tmp}/x.npy"))).numpy())
        """,
        tmp_path,
    )
    np.testing.assert_allclose(served, model(data), rtol=1e-5, atol=1e-5)


def test_tflite_builtin_ops_only_and_matches_keras(tmp_path, data):
    model = conv_gn_conv_model()
    model.export(str(tmp_path / "saved_model"), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved_model"))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no SELECT_TF_OPS
    flatbuffer = converter.convert()

    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    op_names = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not any(name.startswith("FlexDelegate") or name == "CUSTOM" for name in op_names)
    assert {"CONV_2D", "SUM", "RSQRT"} <= op_names, op_names
    source = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(source["index"], data.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], data)
    interpreter.invoke()
    result = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(result, model(data), rtol=1e-4, atol=1e-4)
