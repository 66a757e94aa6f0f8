"""Fine-tune a zoo GN model on an image-folder dataset (e.g. CIFAR-10).

    .venv/bin/python examples/finetune.py --arch=resnet50_gn --weights=imagenet \\
        --data=../shared/data/cifar10-jpeg.tar.gz --image_size=224

The recipe of `zoo.finetune`: a new head trained on the frozen backbone, then
the whole network at a 10x lower learning rate; weight decay on kernels
only. `--data` is a directory or .tar.gz with `train/<class>/*.jpg` and
`test/<class>/*.jpg` (an archive is extracted once into the package's cache,
as `python -m train` does); without it, random images stand in (a smoke
test). The weights are fetched first, so a download problem shows before any
data is read.
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # see keras_gn.command_line

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

import zoo  # noqa: E402
from keras_gn import command_line  # noqa: E402
from train import data  # noqa: E402
from zoo import finetune  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("arch", "resnet50_gn", "Zoo model to fine-tune.")
flags.DEFINE_string("weights", "imagenet", "Weights tag, 'imagenet', a .weights.h5 path, or 'none'.")
flags.DEFINE_string("data", None, "Image-folder directory or .tar.gz (train/ and test/ inside).")
flags.DEFINE_integer("image_size", 224, "Images are resized to this size.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("head_epochs", 1, "Epochs with the backbone frozen.")
flags.DEFINE_integer("epochs", 1, "Epochs of the whole network afterwards.")
flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch (smoke runs).")
flags.DEFINE_float("learning_rate", 0.01, "Learning rate of the head phase (10x lower after).")


def datasets(preprocess):
    size = (FLAGS.image_size, FLAGS.image_size)
    if FLAGS.data is None:
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 255, (4 * FLAGS.batch_size,) + size + (3,)).astype("float32")
        labels = rng.integers(0, 10, len(images))
        ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(FLAGS.batch_size)
        return ds.map(lambda x, y: (preprocess(x), y)), ds.map(lambda x, y: (preprocess(x), y)), 10
    root = pathlib.Path(FLAGS.data)
    if root.is_file():
        root = next(p.parent for p in data.extracted_archive(root).rglob("train") if p.is_dir())
    kwargs = dict(image_size=size, batch_size=FLAGS.batch_size, label_mode="int")
    train = keras.utils.image_dataset_from_directory(root / "train", shuffle=True, seed=0, **kwargs)
    test = keras.utils.image_dataset_from_directory(root / "test", shuffle=False, **kwargs)
    classes = len(train.class_names)
    return (train.map(lambda x, y: (preprocess(x), y)), test.map(lambda x, y: (preprocess(x), y)), classes)


def main(argv):
    del argv
    weights = None if FLAGS.weights == "none" else FLAGS.weights
    tag = zoo.weights.resolve(FLAGS.arch, weights) if weights else None
    preprocess = (lambda x: zoo.preprocess_input(x, tag.tag)) if tag else (lambda x: x / 255.0)
    backbone = zoo.get_model(FLAGS.arch)(weights=weights, include_top=False, pooling="avg",
                                         input_shape=(FLAGS.image_size, FLAGS.image_size, 3))
    train, test, classes = datasets(preprocess)
    model = finetune.with_new_head(backbone, classes, dropout=0.2)
    loss = "sparse_categorical_crossentropy"

    backbone.trainable = False  # 1. the new head only
    model.compile(finetune.sgd(FLAGS.learning_rate), loss, metrics=["accuracy"])
    model.fit(train, epochs=FLAGS.head_epochs, steps_per_epoch=FLAGS.steps_per_epoch)

    backbone.trainable = True  # 2. everything, 10x lower learning rate
    model.compile(finetune.sgd(FLAGS.learning_rate / 10), loss, metrics=["accuracy"])
    model.fit(train, epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch)
    _, accuracy = model.evaluate(test, steps=FLAGS.steps_per_epoch)
    print(f"test accuracy: {accuracy:.4f}")


if __name__ == "__main__":
    command_line.run(main, __doc__, __name__)
