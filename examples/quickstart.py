"""keras-gn in one minute: the shipped CIFAR-10 GN ResNet-20 evaluated and
fine-tuned, then a keras.applications model converted from BN to GN, saved
and reloaded.

    .venv/bin/python examples/quickstart.py --data=../shared/data/cifar10-jpeg.tar.gz

`--data`: CIFAR-10 as an image folder or tar archive (`train/<class>/*`,
`test/<class>/*`); without it, random images stand in and the accuracy means
nothing. Writes `resnet50_gn.keras` into `--output_dir`.
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # see keras_gn.command_line

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

import keras_gn  # noqa: E402
import zoo  # noqa: E402
from keras_gn import command_line  # noqa: E402
from train import data  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "CIFAR-10 image folder or tar archive; random images without it.")
flags.DEFINE_integer("test_images", 2000, "Test images to evaluate on.")
flags.DEFINE_integer("steps", 20, "Fine-tuning steps of 32 images.")
flags.DEFINE_string("output_dir", "runs/quickstart", "Where the converted model is saved.")


def cifar10(split_size):
    """(train, test) batches of RGB [0, 255] images and labels."""
    if FLAGS.data is None:
        print("No --data: random images stand in for CIFAR-10.")
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 255, (split_size, 32, 32, 3)).astype("float32")
        labels = rng.integers(0, 10, split_size)
        ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)
        return ds.repeat(), ds
    source = data.image_folder(FLAGS.data)
    as_float = lambda x, y: (tf.cast(x, tf.float32), y)  # noqa: E731
    train = source.train.shuffle(1000, seed=0).map(as_float).batch(32).repeat()
    test = source.test.take(split_size).map(as_float).batch(250)
    return train, test


def main(argv):
    del argv
    # 1. The shipped weights: GN (2 groups) + Weight Standardization, 88.86% on
    #    CIFAR-10. The model normalizes its own input: RGB values in [0, 255].
    model = zoo.resnet20_gn(weights="cifar10")
    train, test = cifar10(FLAGS.test_images)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    _, accuracy = model.evaluate(test, verbose=0)
    print(f"1. resnet20_gn(weights='cifar10'): {100 * accuracy:.2f}% on {FLAGS.test_images} test images")

    # 2. Fine-tune: GN has no batch statistics, so any batch size works, and
    #    a frozen or training-mode model computes the same.
    model.compile(zoo.finetune.sgd(0.001), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(train, steps_per_epoch=FLAGS.steps, epochs=1, verbose=0, shuffle=False)
    print(f"2. {FLAGS.steps} fine-tuning steps: loss {history.history['loss'][-1]:.3f}")

    # 3. Any functional model from BatchNormalization to GroupNormalization.
    resnet50 = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    converted, report = keras_gn.convert_bn_to_gn(resnet50, groups=32, return_report=True)
    path = pathlib.Path(FLAGS.output_dir) / "resnet50_gn.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    converted.save(path)
    reloaded = keras.saving.load_model(path)
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    same = np.allclose(reloaded(x), converted(x), atol=1e-5)
    print(f"3. ResNet50: {len(report.layers)} BatchNormalization layers -> GroupNormalization; "
          f"saved to {path}, reloaded, same outputs: {same}")


if __name__ == "__main__":
    command_line.run(main, __doc__, __name__)
