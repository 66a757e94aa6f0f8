"""Whole-model training throughput with BN, keras_gn GN and Keras GN, same run.

    python benchmarks/bench_training.py             # writes results
    python benchmarks/bench_training.py --quick     # tiny, no files

Trains ResNet-50 (`keras.applications`, 224x224, 1000 classes) and the zoo's
CIFAR ResNet-20 (`zoo.resnet20_gn(norm="bn")`: 32x32, 10 classes, He et al.
2016) on random data with SGD, in three versions of the same graph:

- Keras BN: the model as built, with `keras.layers.BatchNormalization`;
- keras_gn GN: `keras_gn.convert_bn_to_gn(model)` (fused kernel where it runs);
- Keras GN: the same rewrite into `keras.layers.GroupNormalization`.

Reports the median images/s over `--steps` training steps after warm-up and
writes `benchmarks/results/training.json` and `training.md`.
"""

import argparse
import json
import os
import pathlib
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_gn  # noqa: E402
import zoo  # noqa: E402
from keras_gn.rewrite import is_batch_norm  # noqa: E402
from keras_gn.rewrite import rewrite_layers  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def to_keras_group_norm(model, groups):
    """The BN -> GN rewrite of keras_gn, into keras.layers.GroupNormalization."""

    def make(bn):
        channels = bn.moving_mean.shape[0]
        return keras.layers.GroupNormalization(
            groups=keras_gn.convert.choose_groups(channels, groups), axis=bn.axis,
            epsilon=1e-5, name=bn.name)

    new_model, _ = rewrite_layers(model, is_batch_norm, make, lambda old, new: None, "keras GN")
    return new_model


def images_per_second(model, batch_size, steps):
    rng = np.random.default_rng(0)
    shape = (batch_size,) + tuple(model.input_shape[1:])
    images = rng.normal(size=shape).astype("float32")
    labels = rng.integers(0, model.output_shape[-1], batch_size)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for _ in range(2):  # warm-up: tracing and the first steps' allocations
        model.train_on_batch(images, labels)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(images, labels)
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--resnet50_batch", type=int, default=16)
    parser.add_argument("--resnet20_batch", type=int, default=128)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    def resnet50():
        return keras.applications.ResNet50(weights=None, classifier_activation=None)

    def resnet20():
        return zoo.resnet20_gn(norm="bn", classifier_activation=None)

    models = [("ResNet-20 (CIFAR)", resnet20, args.resnet20_batch)]
    if not args.quick:
        models.append(("ResNet-50 (ImageNet, 224 px)", resnet50, args.resnet50_batch))
    variants = [
        ("Keras BN", lambda m: m),
        ("keras_gn GN", lambda m: keras_gn.convert_bn_to_gn(m, groups=32)),
        ("Keras GN", lambda m: to_keras_group_norm(m, 32)),
    ]
    rows = []
    for model_name, build, batch in models:
        for variant, convert in variants:
            keras.utils.clear_session()
            rate = images_per_second(convert(build()), batch, 2 if args.quick else args.steps)
            rows.append(dict(model=model_name, normalization=variant, batch_size=batch, images_per_second=rate))
            print(f"{model_name:<30} {variant:<12} batch {batch:>4}: {rate:8.1f} images/s", flush=True)
    if args.quick:
        return
    lines = ["| model | batch | Keras BN img/s | keras_gn GN img/s | Keras GN img/s | keras_gn GN vs Keras BN | keras_gn GN vs Keras GN |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for model_name, _, batch in models:
        rate = {r["normalization"]: r["images_per_second"] for r in rows if r["model"] == model_name}
        lines.append(f"| {model_name} | {batch} | {rate['Keras BN']:.1f} | {rate['keras_gn GN']:.1f} | "
                     f"{rate['Keras GN']:.1f} | {rate['keras_gn GN'] / rate['Keras BN']:.2f}x | "
                     f"{rate['keras_gn GN'] / rate['Keras GN']:.2f}x |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "training.json").write_text(json.dumps(rows, indent=1))
    (RESULTS / "training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
