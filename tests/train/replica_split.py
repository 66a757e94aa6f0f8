"""Trains ResNet-20 a few steps twice from the same weights on the same
batches: on R logical CPU replicas (MirroredStrategy, as the sweeps do) and
on one device with the same global batch, with the sweeps' optimizer and
loss; prints the largest weight difference as JSON.

GN normalizes each image on its own, so how the batch is split across
replicas must not change anything: the difference is float rounding. BN
normalizes with each replica's batch statistics, so it changes: the
contrast shows the comparison can tell the two apart.

    python tests/train/replica_split.py --norm=gn --replicas=8 --per_replica=2

Runs as its own process: the CPU is split into logical devices before
TensorFlow starts.
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--norm", choices=["gn", "bn"], required=True)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--per_replica", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    from train import strategies

    strategies.split_cpu(args.replicas)
    import keras
    import numpy as np
    import tensorflow as tf

    import zoo
    from train import recipe as recipes

    global_batch = args.replicas * args.per_replica
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.steps * global_batch, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, (args.steps * global_batch,))

    def train(strategy, initial=None):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = zoo.resnet20_gn(norm=args.norm, group_size=4, classifier_activation=None)
            if initial is not None:
                model.set_weights(initial)
            model.compile(optimizer=recipes.optimizer(0.1, 1e-4),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        start = model.get_weights()
        model.fit(images, labels, batch_size=global_batch, epochs=1, shuffle=False, verbose=0)
        return start, model

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    mirrored = tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    start, on_replicas = train(mirrored)
    _, on_one_device = train(tf.distribute.OneDeviceStrategy(devices[0]), start)
    trainable = {id(v) for v in on_replicas.trainable_weights}
    changes, differences = [], []
    for a, b, first in zip(on_replicas.weights, on_one_device.weights, start):
        if id(a) in trainable:
            changes.append(float(np.max(np.abs(a.numpy() - first))))
            differences.append(float(np.max(np.abs(a.numpy() - b.numpy()))))
    print(json.dumps(dict(norm=args.norm, replicas=on_replicas.distribute_strategy.num_replicas_in_sync,
                          global_batch=global_batch, steps=args.steps, max_weight_change=max(changes),
                          max_weight_difference=max(differences))))


if __name__ == "__main__":
    main()
