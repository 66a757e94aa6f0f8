"""`python -m train`: train or fine-tune a zoo model with the paper's recipe.

    python -m train --model=resnet20_gn --dataset=folder \\
        --data_dir=cifar10-jpeg.tar.gz --model_dir=runs/r20_gn

    # The paper's setting: 8 replicas with 32 images each, ResNet-50 on ImageNet
    python -m train --model=resnet50_gn --dataset=imagenet2012 \\
        --data_dir=~/tensorflow_datasets --strategy=mirrored \\
        --per_replica_batch_size=32 --model_dir=runs/r50_gn

Writes to --model_dir: `results.json` (flags, per-epoch metrics, final and
median-of-last-5 top-1 error, wall time, images/s), `history.json` and
`log.csv` (one row per epoch), `latest.weights.h5` and `final.weights.h5`,
TensorBoard logs, and the `backup/` that lets a killed run resume where it
stopped when started again with the same flags.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags

from train import recipe as recipes
from train import strategies

FLAGS = flags.FLAGS

# Core flags (fixed names).
flags.DEFINE_string("model", "resnet20_gn", "Zoo model (see zoo.list_models()).")
flags.DEFINE_string("dataset", "cifar10", "A TFDS dataset name (cifar10, cifar100, imagenet2012, ...) "
                    "or 'folder' for an image folder / tar archive in --data_dir.")
flags.DEFINE_string("data_dir", None, "TFDS data directory, or the image folder / tar archive.")
flags.DEFINE_integer("per_replica_batch_size", None, "Images per replica (per GPU); the global batch "
                     "is this times the number of replicas. Default: the recipe's (32 ImageNet, 128 CIFAR).",
                     lower_bound=1)
flags.DEFINE_integer("epochs", None, "Epochs. Default: the recipe's (100 ImageNet, 160 CIFAR).",
                     lower_bound=1)
flags.DEFINE_integer("steps_per_epoch", None, "Cap on training (and evaluation) steps per epoch, for smoke runs.",
                     lower_bound=1)
flags.DEFINE_string("model_dir", None, "Where logs, checkpoints, the backup and results.json go.")
flags.DEFINE_enum("strategy", "default", list(strategies.STRATEGIES), "tf.distribute strategy.")
flags.DEFINE_integer("num_cpu_devices", 0, "Split the CPU into this many logical devices, one replica on each "
                     "(--strategy=mirrored; GPUs are then not used).", lower_bound=0)
flags.DEFINE_enum("mixed_precision", "none", ["none", "mixed_float16", "mixed_bfloat16"], "Dtype policy.")
flags.DEFINE_string("init", None, "Fine-tune from zoo weights: a registry tag or a .weights.h5 path.")
flags.DEFINE_bool("fake_data", False, "Random images (smoke tests, throughput).")
# Recipe and model options.
flags.DEFINE_enum("recipe", None, list(recipes.RECIPES), "Default: cifar for 32 px models/datasets, else imagenet.")
flags.DEFINE_enum("norm", "gn", ["gn", "bn"], "Normalization of the model.")
flags.DEFINE_integer("groups", None, "GN groups. Default: 32, or those of the --init weights.", lower_bound=1)
flags.DEFINE_integer("group_size", None, "GN channels per group instead of --groups.", lower_bound=1)
flags.DEFINE_bool("weight_standardization", False, "Weight Standardization of every convolution (GN+WS, "
                  "Qiao et al. 2019). Default: off, or as the --init weights were trained.")
flags.DEFINE_bool("sync_bn", False, "Synchronize BN statistics across replicas (default: per replica, as in the paper).")
flags.DEFINE_float("base_learning_rate", None, "Learning rate per reference batch (0.1 per 256 ImageNet, per 128 CIFAR).",
                   lower_bound=0.0)
flags.DEFINE_float("warmup_epochs", 0, "Linear learning-rate warm-up, in epochs.", lower_bound=0.0)
flags.DEFINE_float("weight_decay", None, "Default: the recipe's (1e-4).", lower_bound=0.0)
flags.DEFINE_enum("schedule", None, list(recipes.SCHEDULES), "Learning-rate schedule: the recipe's steps "
                  "(default), or a cosine from the peak to 0 at the last step.")
flags.DEFINE_integer("cutout", None, "Cutout (DeVries & Taylor 2017) of this many pixels square on the "
                     "training images, filled with the dataset mean (CIFAR-10: 16). Default: the recipe's (none).",
                     lower_bound=0)
flags.DEFINE_bool("decay_norm_parameters", True, "Apply weight decay to GN/BN gamma and beta (the paper does; "
                  "fine-tuning never does).")
flags.DEFINE_integer("image_size", None, "Training crop size. Default: the recipe's.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("tpu", None, "TPU name or address for --strategy=tpu.")
flags.DEFINE_integer("steps_per_execution", 1, "Training steps per tf.function call: more cuts the "
                     "per-step overhead of small batches on many replicas. Rounded to the nearest divisor "
                     "of the steps per epoch (Keras runs whole executions).", lower_bound=1)
flags.DEFINE_integer("verbose", 1, "Keras progress output: 0 none, 1 progress bars, 2 one line per epoch.",
                     lower_bound=0, upper_bound=2)


def _fail(message):
    raise app.UsageError(message)


def _validate_and_recipe():
    import zoo

    if FLAGS.model not in zoo.list_models():
        _fail(f"--model={FLAGS.model} is not a zoo model; valid: {zoo.list_models()}.")
    if FLAGS.model_dir is None:
        _fail("--model_dir is required.")
    if FLAGS.dataset != "folder" and (os.sep in FLAGS.dataset or FLAGS.dataset.endswith((".tar", ".tar.gz", ".tgz"))):
        _fail(f"--dataset={FLAGS.dataset} is a path, not a TFDS dataset name: for an image folder or tar "
              f"archive use --dataset=folder --data_dir={FLAGS.dataset}")
    if FLAGS.dataset == "folder" and not FLAGS.fake_data and not FLAGS.data_dir:
        _fail("--dataset=folder needs --data_dir (an image folder or .tar.gz).")
    if FLAGS.data_dir and FLAGS.dataset == "folder" and not os.path.exists(FLAGS.data_dir):
        _fail(f"--data_dir={FLAGS.data_dir} does not exist.")
    if FLAGS.per_replica_batch_size is not None and FLAGS.per_replica_batch_size < 1:
        _fail(f"--per_replica_batch_size={FLAGS.per_replica_batch_size} must be at least 1.")
    if FLAGS.strategy != "mirrored" and FLAGS.num_cpu_devices > 1:
        _fail("--num_cpu_devices needs --strategy=mirrored.")
    if FLAGS.init and not os.path.exists(FLAGS.init):
        try:
            zoo.weights.resolve(FLAGS.model, FLAGS.init)
        except ValueError as error:
            _fail(f"--init={FLAGS.init}: {error}")
    name = FLAGS.recipe
    if name is None:
        cifar_model = zoo.default_image_size(FLAGS.model) == 32
        name = "cifar" if FLAGS.dataset.startswith("cifar") or cifar_model else "imagenet"
    base = recipes.RECIPES[name]
    try:
        return recipes.Recipe(**{
            **base.__dict__,
            "epochs": FLAGS.epochs or base.epochs,
            "per_replica_batch_size": FLAGS.per_replica_batch_size or base.per_replica_batch_size,
            "weight_decay": base.weight_decay if FLAGS.weight_decay is None else FLAGS.weight_decay,
            "image_size": FLAGS.image_size or base.image_size,
            "schedule": FLAGS.schedule or base.schedule,
            "cutout": base.cutout if FLAGS.cutout is None else FLAGS.cutout,
        })
    except ValueError as error:
        _fail(f"--{error}")


def _source(recipe):
    from train import data

    if FLAGS.fake_data:
        classes = 10 if recipe.name == "cifar" else 1000
        return data.fake(classes, recipe.image_size)
    try:
        if FLAGS.dataset == "folder":
            return data.image_folder(FLAGS.data_dir)
        return data.tfds_dataset(FLAGS.dataset, FLAGS.data_dir)
    except ValueError as error:
        _fail(str(error))


def build_model(recipe, num_classes):
    """Raw RGB [0, 255] -> `zoo.Preprocessing` -> the zoo model -> float32 logits."""
    import keras

    import zoo
    from zoo import finetune

    size = recipe.image_size
    inputs = keras.Input((size, size, 3), name="image")
    builder = zoo.get_model(FLAGS.model)
    options = dict(norm=FLAGS.norm, groups=FLAGS.groups, group_size=FLAGS.group_size,
                   sync_bn=FLAGS.sync_bn)
    if FLAGS.weight_standardization:  # unset: as the --init weights were trained
        options["weight_standardization"] = True
    if FLAGS.init:
        tag = None if os.path.exists(FLAGS.init) else zoo.weights.resolve(FLAGS.model, FLAGS.init).tag
        prep = zoo.Preprocessing.for_weights(tag) if tag else recipes.preprocessing(recipe)
        backbone = builder(include_top=False, pooling="avg", weights=FLAGS.init,  # `prep` comes first
                           input_shape=(size, size, 3), include_preprocessing=False, **options)
        model = finetune.with_new_head(backbone, num_classes, classifier_activation=None)
        logits = model(prep(inputs))
        print(f"Fine-tuning from {FLAGS.init}: {len(backbone.weights)} backbone weights loaded, "
              f"a new {num_classes}-class head, no weight decay on gamma/beta.", flush=True)
    else:
        model = builder(input_tensor=recipes.preprocessing(recipe)(inputs), classes=num_classes,
                        classifier_activation=None, **options)
        logits = model.output
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(inputs, logits, name=f"{FLAGS.model}_{FLAGS.norm}")


def gn_grouping(model):
    """{channels: groups} of every GroupNormalization layer in `model`
    (nested models included): the grouping a run actually trained with."""
    import keras_gn

    grouping, stack = {}, [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras_gn.GroupNormalization):
            (channels,) = layer.input_spec.axes.values()
            grouping[int(channels)] = layer.num_groups
        stack += getattr(layer, "layers", [])
    return dict(sorted(grouping.items()))


def _name_unreadable_images(source):
    """After a data error: if images of a folder source cannot be decoded,
    stop with their names (a corrupt file stops the run; remove or replace
    it, and the same command resumes from the backup)."""
    from train import data

    if not source.files:
        return
    print(f"A data error stopped training; checking the {len(source.files)} image files...", flush=True)
    bad = data.find_unreadable_images(source.files)
    if bad:
        listed = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        _fail(f"{len(bad)} image file(s) cannot be decoded:\n  {listed}\nRemove or replace them, then run "
              "the same command again: it resumes from the last backup.")


def main(argv):
    del argv
    recipe = _validate_and_recipe()
    import tensorflow as tf

    tf.get_logger().setLevel("WARNING")  # tf.distribute's per-step INFO lines
    strategy = strategies.make(FLAGS.strategy, FLAGS.num_cpu_devices, FLAGS.tpu)

    import keras
    import numpy as np

    from train import callbacks as run_callbacks
    from train import data

    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.mixed_precision != "none":
        keras.config.set_dtype_policy(FLAGS.mixed_precision)
    replicas = strategy.num_replicas_in_sync
    global_batch = recipe.per_replica_batch_size * replicas
    source = _source(recipe)
    if global_batch > source.train_examples:
        _fail(f"--per_replica_batch_size={recipe.per_replica_batch_size} x {replicas} replicas = "
              f"{global_batch} images per step, more than the {source.train_examples} training "
              "examples; use a smaller per-replica batch.")
    steps = source.train_examples // global_batch
    eval_steps = -(-source.test_examples // global_batch)
    if FLAGS.steps_per_epoch:
        steps, eval_steps = min(steps, FLAGS.steps_per_epoch), min(eval_steps, FLAGS.steps_per_epoch)
    execution = recipes.steps_per_execution(steps, FLAGS.steps_per_execution)
    if execution != FLAGS.steps_per_execution:
        print(f"--steps_per_execution={FLAGS.steps_per_execution} does not divide the {steps} steps per "
              f"epoch; using {execution}.", flush=True)
    train_ds, test_ds = data.pipelines(source, recipe, global_batch, FLAGS.seed)

    chief = strategies.is_chief()
    model_dir = FLAGS.model_dir if chief else os.path.join(FLAGS.model_dir, f"worker_{strategies.task()[1]}")
    os.makedirs(model_dir, exist_ok=True)
    decay_norm = FLAGS.decay_norm_parameters and not FLAGS.init
    peak = recipes.learning_rate(recipe, global_batch, FLAGS.base_learning_rate)
    with strategy.scope():
        model = build_model(recipe, source.num_classes)
        model.compile(
            optimizer=recipes.optimizer(
                recipes.schedule(recipe, recipe.epochs, steps, peak, FLAGS.warmup_epochs),
                recipe.weight_decay, decay_norm),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            steps_per_execution=execution,
        )
    log = run_callbacks.EpochLog(model_dir, global_batch, steps)
    callbacks = [
        log,  # before the backup: see train.callbacks
        run_callbacks.Backup(os.path.join(model_dir, "backup"), recipe.epochs),
        keras.callbacks.ModelCheckpoint(os.path.join(model_dir, "latest.weights.h5"), save_weights_only=True),
        keras.callbacks.TensorBoard(os.path.join(model_dir, "tensorboard")),
    ]
    print(f"{FLAGS.model} ({FLAGS.norm}) on {source.name}: {replicas} replica(s) x "
          f"{recipe.per_replica_batch_size} = {global_batch} images per step, {steps} steps per epoch, "
          f"{recipe.epochs} epoch{'s' * (recipe.epochs != 1)}, peak learning rate {peak:g}, "
          f"recipe {recipe.name}.", flush=True)
    start = time.time()
    try:
        model.fit(train_ds, epochs=recipe.epochs, steps_per_epoch=steps, validation_data=test_ds,
                  validation_steps=eval_steps, callbacks=callbacks, verbose=FLAGS.verbose,
                  shuffle=False)  # the pipeline shuffles
    except tf.errors.InvalidArgumentError:
        _name_unreadable_images(source)
        raise
    wall = time.time() - start
    model.save_weights(os.path.join(model_dir, "final.weights.h5"))

    history = [log.history[e] for e in sorted(log.history)]
    resumed_at = model._initial_epoch or 0  # epochs restored from the backup
    # Earlier runs' epochs (their start-up time is not recorded) plus this run's wall time.
    earlier_seconds = sum(log.history[e]["epoch_seconds"] for e in log.history if e < resumed_at)
    key_flags = FLAGS.get_key_flags_for_module(sys.modules[__name__])
    errors = [100.0 * (1.0 - h["val_accuracy"]) for h in history if "val_accuracy" in h]
    results = dict(
        flags={f.name: f.value for f in key_flags},
        command_flags=[f.serialize() for f in key_flags if f.present],  # as given: --noname for a False bool
        recipe=recipe.__dict__, dataset=source.name, num_classes=source.num_classes,
        replicas=replicas, global_batch_size=global_batch, steps_per_epoch=steps,
        epochs_completed=len(history), total_steps=sum(h["steps"] for h in history),
        optimizer_steps=int(model.optimizer.iterations.numpy()), steps_per_execution=execution,
        peak_learning_rate=peak, gn_groups=gn_grouping(model), history=history,
        final_top1_error=errors[-1] if errors else None,
        median_top1_error_last5=recipes.median_of_last(errors, 5),
        resumed_at_epoch=resumed_at, wall_seconds_this_run=wall, wall_seconds_all_runs=earlier_seconds + wall,
        images_per_second=float(np.median([h["images_per_second"] for h in history])) if history else None,
    )
    with open(os.path.join(model_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    if errors:
        print(f"Top-1 test error: {errors[-1]:.2f}% after the last epoch, {results['median_top1_error_last5']:.2f}% "
              f"the median of the last {min(5, len(errors))}; {len(history)} epoch{'s' * (len(history) != 1)} in "
              f"{results['wall_seconds_all_runs'] / 60:.1f} min. Results: {model_dir}/results.json")


def run():
    """Console-script entry point."""
    from keras_gn import command_line

    command_line.run(main, __doc__, __name__)
