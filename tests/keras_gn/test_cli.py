"""Tests of the `keras-gn convert` command and of the runnable example."""

import os
import pathlib
import subprocess
import sys

import keras
import pytest

import keras_gn
from keras_gn import cli

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_convert_application_prints_report_and_saves(tmp_path, capsys):
    output = tmp_path / "resnet50_gn.keras"
    assert cli.main(["convert", "--application", "ResNet50", "--input_shape", "32,32,3",
                     "--init", "zero_init_last", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "Converted 53 BatchNormalization layers" in printed
    assert "conv5_block3_3_bn" in printed and "reset, gamma=0" in printed
    model = keras.saving.load_model(output)
    assert sum(isinstance(l, keras_gn.GroupNormalization) for l in model.layers) == 53


def test_convert_saved_model_file_with_group_size(tmp_path, capsys):
    source = tmp_path / "bn.keras"
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(48, 3)(inputs)
    keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(x)).save(source)
    assert cli.main(["convert", "--input", str(source), "--group_size", "16"]) == 0
    assert any(line.split()[:4] == ["bn", "48", "3", "16"]
               for line in capsys.readouterr().out.splitlines())


def test_unknown_application_is_a_clear_error():
    with pytest.raises(SystemExit, match="--application=ResNet51 is not a keras.applications model"):
        cli.main(["convert", "--application", "ResNet51"])


@pytest.mark.slow
def test_module_entry_point_and_example_run():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    help_text = subprocess.run([sys.executable, "-m", "keras_gn", "convert", "--help"],
                               capture_output=True, text=True, env=env, check=True).stdout
    assert "--application" in help_text
    example = subprocess.run([sys.executable, str(ROOT / "examples" / "convert_resnet50.py")],
                             capture_output=True, text=True, env=env, timeout=600)
    assert example.returncode == 0, example.stderr[-3000:]
    assert "Converted 53 BatchNormalization layers" in example.stdout
    assert "one training step, loss" in example.stdout
