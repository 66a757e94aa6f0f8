"""Fine-tune BiT (Big Transfer) on an image-folder dataset with BiT-HyperRule.

    .venv/bin/python examples/bit_finetune.py --weights=resnetv2_50x1_bit.goog_in21k \\
        --data_dir=../shared/data/cifar10-jpeg.tar.gz

BiT-M R50x1 (pre-trained on ImageNet-21k) on CIFAR-10 by BiT-HyperRule
(Kolesnikov et al. 2020, section 3.3; google-research/big_transfer
`bit_hyperrule.py`, here `zoo.finetune.bit_hyperrule`):

- SGD with momentum 0.9, no weight decay; learning rate 0.003 at a global
  batch of 512, scaled linearly with the batch;
- the schedule by dataset size: under 20k images 500 steps, under 500k 10k
  steps (CIFAR-10's 50k), else 20k; linear warmup (100 or 500 steps), then
  10x decays at 30%, 60% and 90% of the run (40/60/80% for small sets);
- the resolution by image size: images under 96x96 pixels (CIFAR's 32x32)
  are resized to 160x160 and randomly cropped to 128x128, larger ones
  resized to 512 and cropped to 480; random horizontal flips; evaluation
  resizes to the crop size;
- MixUp (alpha 0.1) for datasets of 20k images or more: on for CIFAR-10;
- a new, zero-initialised head.

The model takes RGB values in [0, 255] and scales them to [-1, 1] itself, as
BiT was trained. `--weights` is a registry tag (`zoo.list_weights(arch)`),
a BiT `.npz` file (converted on the fly), or `none`. `--data_dir` is a
directory or .tar.gz with `train/<class>/` and `test/<class>/` (an archive
is extracted once into the package's cache, as `python -m train` does);
without it, random images stand in (`train.data.fake`, a smoke test).
`--steps` shortens the run, compressing the schedule. The weights are
loaded first, so a download problem shows before any data is read.
"""

import dataclasses
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # see keras_gn.command_line

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

import zoo  # noqa: E402
from keras_gn import command_line  # noqa: E402
from train import data  # noqa: E402
from zoo import convert  # noqa: E402
from zoo import finetune  # noqa: E402

AUTOTUNE = tf.data.AUTOTUNE
FLAGS = flags.FLAGS
flags.DEFINE_string("arch", "resnetv2_50x1_bit", "Zoo BiT model to fine-tune.")
flags.DEFINE_string("weights", "goog_in21k", "Weights tag, a BiT .npz file, or 'none'.")
flags.DEFINE_string("data_dir", None, "Image-folder directory or .tar.gz (train/ and test/ inside); "
                    "random images without it.")
flags.DEFINE_integer("per_replica_batch_size", 16, "Batch size per replica (BiT: 512 in all).")
flags.DEFINE_bool("mirrored", False, "Train on every local GPU with tf.distribute.MirroredStrategy.")
flags.DEFINE_integer("steps", None, "Training steps (default: BiT-HyperRule's); the schedule is compressed.")
flags.DEFINE_integer("eval_steps", None, "Cap on evaluation batches (smoke runs).")
flags.DEFINE_integer("precrop", None, "Resize training images to this size (default: BiT-HyperRule's).")
flags.DEFINE_integer("crop", None, "Random crop size, and evaluation size (default: BiT-HyperRule's).")
flags.DEFINE_float("base_learning_rate", 0.003, "Learning rate at a global batch of 512.")

BIT_PREPROCESSING = dict(color="RGB", scale=255.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # [-1, 1]


def backbone():
    """The pre-trained BiT features (pooled, any input size), input already in [-1, 1]."""
    kwargs = dict(include_top=False, pooling="avg", include_preprocessing=False)
    build = zoo.get_model(FLAGS.arch)
    if not FLAGS.weights.endswith(".npz"):
        return build(weights=None if FLAGS.weights == "none" else FLAGS.weights, **kwargs)
    model = build(weights=None, **kwargs)
    arrays = convert.read_source("bit", FLAGS.weights, FLAGS.arch)  # checks every array first
    for layer in model.layers:
        if layer.weights:
            for variable, value in zip(layer.weights, arrays[layer.name], strict=True):
                variable.assign(value)
    return model


def mixup(images, labels, alpha):
    """MixUp as BiT does it: one Beta(alpha, alpha) weight per batch, each
    example mixed with another of the same batch (images and one-hot labels)."""
    a, b = tf.random.gamma((), alpha, dtype=tf.float64), tf.random.gamma((), alpha, dtype=tf.float64)
    lam = tf.cast(a / (a + b), tf.float32)
    order = tf.random.shuffle(tf.range(tf.shape(images)[0]))
    return (lam * images + (1 - lam) * tf.gather(images, order),
            lam * labels + (1 - lam) * tf.gather(labels, order))


def pipelines(source, rule, global_batch):
    classes = source.num_classes

    def augment(image, label):
        image = tf.image.resize(tf.cast(image, tf.float32), (rule.precrop, rule.precrop))
        image = tf.image.random_crop(image, (rule.crop, rule.crop, 3))
        return tf.image.random_flip_left_right(image), tf.one_hot(label, classes)

    def evaluate(image, label):
        return tf.image.resize(tf.cast(image, tf.float32), (rule.crop, rule.crop)), tf.one_hot(label, classes)

    train = source.encoded_train.shuffle(source.encoded_shuffle_buffer, seed=0, reshuffle_each_iteration=True)
    train = train.repeat().map(source.decode, AUTOTUNE).map(augment, AUTOTUNE).batch(global_batch, drop_remainder=True)
    if rule.mixup_alpha:
        train = train.map(lambda x, y: mixup(x, y, rule.mixup_alpha), AUTOTUNE)
    test = source.test.map(evaluate, AUTOTUNE).batch(global_batch)
    return train.prefetch(AUTOTUNE), test.prefetch(AUTOTUNE)


def main(argv):
    del argv
    strategy = tf.distribute.MirroredStrategy() if FLAGS.mirrored else tf.distribute.get_strategy()
    global_batch = FLAGS.per_replica_batch_size * strategy.num_replicas_in_sync
    with strategy.scope():
        features = backbone()

    source = data.fake(10, 32) if FLAGS.data_dir is None else data.image_folder(FLAGS.data_dir)
    image, _ = next(iter(source.train.take(1)))
    rule = finetune.bit_hyperrule(source.train_examples, tuple(image.shape[:2]))
    rule = dataclasses.replace(rule, precrop=FLAGS.precrop or rule.precrop, crop=FLAGS.crop or rule.crop)
    if FLAGS.steps:
        rule = rule.with_steps(FLAGS.steps)
    train, test = pipelines(source, rule, global_batch)
    peak = finetune.bit_learning_rate(global_batch, FLAGS.base_learning_rate)
    print(f"BiT-HyperRule for {source.train_examples} images of {tuple(image.shape[:2])}: {rule.steps} steps "
          f"(warmup {rule.supports[0]}, decays after {list(rule.supports[1:-1])}), resize {rule.precrop} -> crop "
          f"{rule.crop}, MixUp alpha {rule.mixup_alpha}; batch {global_batch}, peak learning rate {peak:g}.",
          flush=True)

    with strategy.scope():
        inputs = keras.Input((rule.crop, rule.crop, 3))
        x = zoo.Preprocessing(**BIT_PREPROCESSING, name="preprocessing")(inputs)
        x = features(x)
        outputs = keras.layers.Dense(source.num_classes, kernel_initializer="zeros", name="head")(x)
        model = keras.Model(inputs, outputs, name=f"{FLAGS.arch}_finetune")
        model.compile(
            optimizer=keras.optimizers.SGD(finetune.HyperRuleSchedule(peak, rule.supports), momentum=0.9),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    chunk = 500 if rule.steps % 500 == 0 else rule.steps  # one Keras "epoch" per 500 steps
    model.fit(train, epochs=math.ceil(rule.steps / chunk), steps_per_epoch=chunk, verbose=2)
    _, accuracy = model.evaluate(test, steps=FLAGS.eval_steps, verbose=2)
    print(f"test accuracy: {accuracy:.4f}")


if __name__ == "__main__":
    command_line.run(main, __doc__, __name__)
