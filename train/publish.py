"""Ships a finished training run's weights in the zoo.

    python -m train.publish --model_dir=runs/resnet20_gn_cifar10 --tag=cifar10 \\
        --data_dir=../shared/data/cifar10-jpeg.tar.gz --default_for=cifar10

Reads the run's `results.json`, builds the zoo model it trained with the
recipe's input normalization inside (a `zoo.Preprocessing` layer, so the
model takes RGB values in [0, 255]), loads `final.weights.h5` and measures
the top-1 accuracy on the whole test split. That accuracy must equal the
run's last evaluation (otherwise the file is not this run's weights). Then
it writes `zoo/pretrained/<arch>.<tag>.weights.h5`, registers it in
`zoo/weights_registry.json` with its sha256, the measured accuracy and the
training recipe, and checks that the written file and entry reproduce the
model's outputs exactly. After that, `zoo.<arch>(weights="<tag>")` loads it.

`--storage_dtype=float16` halves the file (VGG-16: 59 MB -> 29 MB): the
weights are rounded to float16 values, measured again as rounded (the
registered accuracy is the shipped file's; the float32 weights' accuracy
is registered beside it) and stored as float16; Keras loads them into the
model's float32 variables exactly.

`--release_url=<base URL>` is for files too large to keep in the
repository: the file goes to `--output_dir` (default `dist/weights/`)
instead of `zoo/pretrained/`, and the entry registers
`<base URL>/<file name>` with its sha256, as the ImageNet weights are.
The reload check then goes through the download path (from the output
directory as a mirror), so the registered URL, name and sha256 are the
ones tested; upload the file to that URL before releasing the registry.
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import warnings
import platform
import sys

from absl import app
from absl import flags

if __name__ == "__main__":  # before TensorFlow is imported: see keras_gn.command_line
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from train import recipe as recipes  # noqa: E402
from zoo import download  # noqa: E402
from zoo import weights as weights_lib  # noqa: E402

FLAGS = flags.FLAGS

# How far the measured accuracy may be from the run's last evaluation: the
# same weights on the same images differ at most by float round-off, which
# can flip a near-tie (a few images in 10,000).
ACCURACY_TOLERANCE = 0.0005
# The same for the mean test cross-entropy (Keras' `val_loss`; the weight
# decay is in the optimizer, not in the loss). Accuracy alone can miss other
# weights or another grouping: a model that predicts one class scores the
# same either way, but its loss does not.
LOSS_TOLERANCE = 0.001
# How the shipped file may store the weights.
STORAGE_DTYPES = ("float32", "float16")
# Where the files of `--release_url` entries are written, to be uploaded.
RELEASE_DIR = "dist/weights"


class PublishError(ValueError):
    """The run cannot be shipped as it is; the message says why and what to do."""


def read_run(model_dir):
    path = pathlib.Path(model_dir) / "results.json"
    if not path.exists():
        raise PublishError(f"{path} does not exist: {model_dir} is not a finished `python -m train` "
                           "run (results.json is written when training ends).")
    run = json.loads(path.read_text())
    run_flags = run["flags"]
    if run_flags.get("norm") != "gn":
        raise PublishError(f"The run used --norm={run_flags.get('norm')}; the zoo ships GN weights (--norm=gn).")
    if run_flags.get("init"):
        raise PublishError(f"The run was fine-tuned from --init={run_flags['init']}; only runs trained "
                           "from scratch (normalization from their recipe) can be shipped.")
    if run_flags.get("steps_per_epoch"):
        raise PublishError(f"The run is a smoke run (--steps_per_epoch={run_flags['steps_per_epoch']}): "
                           "its evaluation did not cover the test split.")
    if not (pathlib.Path(model_dir) / "final.weights.h5").exists():
        raise PublishError(f"{model_dir}/final.weights.h5 is missing.")
    return run


def run_recipe(run):
    """The run's recipe as it was recorded (the normalization constants
    from the recipe of that name where an older run did not record them)."""
    recorded = dict(run["recipe"])
    recorded["decay_at"] = tuple(recorded["decay_at"])
    for key in ("mean", "std"):
        if key in recorded:
            recorded[key] = tuple(recorded[key])
    return dataclasses.replace(recipes.RECIPES[recorded["name"]], **recorded)


def builder_args(run):
    """The run's GN grouping and Weight Standardization, where they are not
    the builders' defaults."""
    groups, group_size = run["flags"].get("groups"), run["flags"].get("group_size")
    args = {}
    if group_size is not None:
        args["group_size"] = group_size
    elif groups not in (None, weights_lib.DEFAULT_GROUPS):
        args["groups"] = groups
    if run["flags"].get("weight_standardization"):
        args["weight_standardization"] = True
    return args


def build(arch, recipe, num_classes, args):
    """The zoo model with the recipe's normalization after its input,
    outputting logits (as the run trained it)."""
    import keras

    import zoo

    inputs = keras.Input((recipe.image_size, recipe.image_size, 3), name="image")
    return zoo.get_model(arch)(input_tensor=recipes.preprocessing(recipe)(inputs), classes=num_classes,
                               classifier_activation=None, **args)


def evaluation_split(run, recipe, data_dir):
    """The run's test split, prepared as the run evaluated it, and its size."""
    from train import data

    run_flags = run["flags"]
    if run_flags.get("fake_data"):
        source = data.fake(run["num_classes"], recipe.image_size)
    elif run_flags["dataset"] == "folder":
        source = data.image_folder(data_dir or run_flags["data_dir"])
    else:
        source = data.tfds_dataset(run_flags["dataset"], data_dir or run_flags["data_dir"])
    return data.pipelines(source, recipe, 250)[1], source.test_examples


def evaluate(model, dataset, examples):
    """Top-1 accuracy and mean cross-entropy of `model`, which outputs
    logits (the loss the run logged is from logits: probabilities would
    underflow to 0 where a logit leads by more than ~87 and cap the loss),
    on `dataset`, with a progress bar."""
    import keras
    import numpy as np

    correct = seen = 0
    cross_entropy = 0.0
    progress = keras.utils.Progbar(examples, unit_name="image")
    for images, labels in dataset:
        logits = np.asarray(model.predict_on_batch(images), np.float64)
        labels = labels.numpy()
        correct += int(np.sum(np.argmax(logits, axis=-1) == labels))
        top = logits.max(axis=-1)
        log_normalizer = top + np.log(np.exp(logits - top[:, None]).sum(axis=-1))
        cross_entropy += float(np.sum(log_normalizer - logits[np.arange(len(labels)), labels]))
        seen += len(labels)
        progress.update(seen)
    return correct / seen, cross_entropy / seen


def round_weights(model, dtype):
    """Rounds `model`'s float32 weights to `dtype` values (kept float32),
    as a file storing them as `dtype` gives them back."""
    import numpy as np

    for variable in model.weights:
        value = variable.numpy()
        if value.dtype != np.float32:
            continue
        with np.errstate(over="ignore"):  # said below, with the fix
            rounded = value.astype(dtype)
        if not np.all(np.isfinite(rounded)):
            raise PublishError(
                f"{variable.path} has values beyond {dtype}'s range (largest magnitude "
                f"{np.max(np.abs(value)):.4g}): publish with --storage_dtype=float32.")
        variable.assign(rounded.astype(np.float32))


def store_as(path, dtype):
    """Rewrites the `.weights.h5` at `path` with its float32 arrays stored
    as `dtype` (a new file: HDF5 does not reclaim the space of replaced
    arrays)."""
    import h5py
    import numpy as np

    path = pathlib.Path(path)
    original = path.with_name(path.name + ".float32")
    path.replace(original)
    with h5py.File(original, "r") as source, h5py.File(path, "w") as target:
        target.attrs.update(source.attrs)

        def copy(name, item):
            if isinstance(item, h5py.Group):
                target.require_group(name).attrs.update(item.attrs)
                return
            data = item[()]
            if data.dtype == np.float32:
                data = data.astype(dtype)
            target.create_dataset(name, data=data).attrs.update(item.attrs)

        source.visititems(copy)
    original.unlink()


def check_release_url(release_url):
    if not release_url.startswith(("https://", "http://")):
        raise PublishError(f"release_url={release_url!r} is not an http(s) URL: give the base URL the file "
                           "will be uploaded under, e.g. https://github.com/<owner>/keras-gn/releases/download/v1.0")


def registry_entry(arch, tag, run, recipe, grouping, top1, sha256, filename, dataset_name, default_for, notes="",
                   storage_dtype="float32", float32_top1=None, release_url=None):
    run_flags = run["flags"]
    machine_specific = ("model_dir", "data_dir", "verbose")
    if "command_flags" in run:  # the flags as given
        given = [arg for arg in run["command_flags"] if arg.lstrip("-").split("=")[0] not in machine_specific]
    else:  # an older run: its flags' values, where set
        given = [f"--{name}={value}" for name, value in run_flags.items()
                 if name not in machine_specific and not (value is None or value is False or value == "none")]
    command = ["python -m train"] + given
    stored = "" if storage_dtype == "float32" else f", weights stored as {storage_dtype}"
    float32_metric = {} if float32_top1 is None else {"top1_accuracy_float32_weights": round(100 * float32_top1, 2)}
    location = ({"url": f"{release_url.rstrip('/')}/{filename}", "filename": filename} if release_url
                else {"packaged": filename})
    return {
        "tag": f"{arch}.{tag}",
        "format": "keras",
        **location,
        "sha256": sha256,
        "source": "Trained with keras-gn (train/, python -m train); shipped with python -m train.publish.",
        "license": "Apache-2.0",
        "dataset": dataset_name,
        "classes": run["num_classes"],
        "metric": {
            "top1_accuracy": round(100 * top1, 2),
            "top1_error": round(100 * (1 - top1), 2),
            "evaluation": f"all {run['test_examples']} test images, {recipe.image_size} px, no augmentation"
                          f"{stored} (measured by train.publish on the shipped file)",
            **float32_metric,
            "median_top1_error_last5": run["median_top1_error_last5"],
        },
        "input_size": recipe.image_size,
        "crop_pct": recipe.image_size / recipe.eval_resize if recipe.eval_resize else 1.0,
        "preprocessing": {"color": "RGB", "scale": 255.0, "mean": list(recipe.mean), "std": list(recipe.std),
                          "inside_model": True},
        "default_for": default_for,
        "builder_args": grouping or None,
        "training": {
            "command": " ".join(command),
            "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(recipe).items()},
            "replicas": run["replicas"],
            "global_batch_size": run["global_batch_size"],
            "peak_learning_rate": run["peak_learning_rate"],
            "epochs": run["epochs_completed"],
            "seed": run_flags["seed"],
            "wall_hours": round(run["wall_seconds_all_runs"] / 3600, 2),
            "images_per_second": round(run["images_per_second"], 1),
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        },
        "notes": " ".join(filter(None, ["The model normalizes its own inputs: give it RGB values in [0, 255].",
                                        notes])),
    }


def publish(model_dir, tag, data_dir=None, dataset_name="cifar10", default_for=None, notes="",
            storage_dtype="float32", release_url=None, output_dir=RELEASE_DIR):
    """Measures, writes into `zoo/pretrained/` (or `output_dir`) and registers a run's
    weights (`notes`: said in the entry after the fixed first sentence;
    `storage_dtype`: one of `STORAGE_DTYPES`; `release_url`: register the
    file as downloaded from there, written to `output_dir`: see the module
    docstring); returns the registry entry."""
    import numpy as np

    if storage_dtype not in STORAGE_DTYPES:
        raise PublishError(f"storage_dtype={storage_dtype!r} is not one of {STORAGE_DTYPES}.")
    if release_url:
        check_release_url(release_url)  # before the measuring

    registry_file = weights_lib.REGISTRY_FILE
    target_dir = pathlib.Path(output_dir) if release_url else weights_lib.PACKAGED_DIR
    run = read_run(model_dir)
    recipe, arch = run_recipe(run), run["flags"]["model"]
    grouping = builder_args(run)
    model = build(arch, recipe, run["num_classes"], grouping)
    try:
        with warnings.catch_warnings():
            # Keras warns per layer it cannot match, then the load fails or
            # the accuracy check below does: one clear error instead.
            warnings.filterwarnings("ignore", message="Skipping nested container")
            model.load_weights(pathlib.Path(model_dir) / "final.weights.h5")
    except ValueError as error:
        raise PublishError(
            f"{model_dir}/final.weights.h5 does not fit the model that results.json describes ({error}): "
            "these are not the weights the run trained.") from error
    dataset, run["test_examples"] = evaluation_split(run, recipe, data_dir)
    top1, loss = evaluate(model, dataset, run["test_examples"])
    last = run["history"][-1]
    if abs(top1 - last["val_accuracy"]) > ACCURACY_TOLERANCE or abs(loss - last["val_loss"]) > LOSS_TOLERANCE:
        raise PublishError(
            f"{model_dir}/final.weights.h5 reaches {100 * top1:.2f}% (loss {loss:.4f}) on the test split, but "
            f"the run's last evaluation was {100 * last['val_accuracy']:.2f}% (loss {last['val_loss']:.4f}): "
            "these are not the weights the run evaluated, or the data is not the run's (check --data_dir).")
    float32_top1 = None
    if storage_dtype != "float32":
        float32_top1 = top1
        round_weights(model, storage_dtype)
        top1, loss = evaluate(model, dataset, run["test_examples"])

    filename = f"{arch}.{tag}.weights.h5"
    target_dir.mkdir(parents=True, exist_ok=True)
    path = target_dir / filename
    model.save_weights(path)
    if storage_dtype != "float32":
        store_as(path, storage_dtype)
    entry = registry_entry(arch, tag, run, recipe, grouping, top1, weights_lib.sha256_of(path), filename,
                           dataset_name, default_for, notes, storage_dtype, float32_top1, release_url)

    old_registry = registry_file.read_text() if registry_file.exists() else None
    records = json.loads(old_registry) if old_registry else []
    if default_for:
        for record in records:
            if record["tag"].split(".", 1)[0] == arch and record.get("default_for") == default_for:
                record["default_for"] = None
    replaced = [r for r in records if r["tag"] == entry["tag"]]
    records = [r for r in records if r["tag"] != entry["tag"]] + [entry]
    registry_file.write_text(json.dumps(records, indent=2) + "\n")
    weights_lib.registry.cache_clear()

    # What users load must reproduce the run's model exactly.
    import zoo

    images = next(iter(dataset))[0]
    try:
        with download.mirrored_from(target_dir) if release_url else contextlib.nullcontext():
            loaded = zoo.get_model(arch)(weights=entry["tag"], classes=run["num_classes"],
                                         classifier_activation=None)
        if not np.array_equal(loaded.predict_on_batch(images), model.predict_on_batch(images)):
            raise PublishError(f"zoo.{arch}(weights={entry['tag']!r}) does not reproduce the run's outputs; "
                               "the registry was left as it was.")
    except BaseException:
        restore(registry_file, old_registry)
        raise
    for record in replaced:  # a packaged file that the entry no longer names
        if record.get("packaged") and record["packaged"] != entry.get("packaged"):
            (weights_lib.PACKAGED_DIR / record["packaged"]).unlink(missing_ok=True)
    return entry


def restore(registry_file, old_registry):
    """Puts the registry back as it was before `publish` wrote it."""
    if old_registry is None:
        registry_file.unlink()
    else:
        registry_file.write_text(old_registry)
    weights_lib.registry.cache_clear()


def define_flags():
    """The command's flags; defined only when it runs as a command, so that
    importing this module beside `train.app` or `train.experiments` (which
    define `--model_dir`, `--data_dir`) does not clash."""
    flags.DEFINE_string("model_dir", None, "The finished run (its results.json and final.weights.h5).")
    flags.DEFINE_string("tag", None, "Weights name after the architecture: `<arch>.<tag>`, e.g. cifar10.")
    flags.DEFINE_string("data_dir", None, "The run's data (image folder / tar, or TFDS directory). "
                        "Default: the run's --data_dir.")
    flags.DEFINE_string("dataset_name", "cifar10", "The dataset, as the registry names it.")
    flags.DEFINE_string("default_for", None, "Make these the weights `weights=\"<name>\"` loads (e.g. cifar10).")
    flags.DEFINE_string("notes", "", "What else users should know, for the entry's notes (after the fixed "
                        "sentence on the input range), so that publishing again keeps it.")
    flags.DEFINE_enum("storage_dtype", "float32", list(STORAGE_DTYPES), "How the shipped file stores the "
                      "weights; float16 halves it, and the accuracy registered is measured as stored.")
    flags.DEFINE_string("release_url", None, "Register the file as downloaded from <release_url>/<file name> "
                        "(for files too large for the repository) instead of packaging it in zoo/pretrained/; "
                        "upload it there from --output_dir.")
    flags.DEFINE_string("output_dir", RELEASE_DIR, "Where a --release_url file is written, to be uploaded.")


def main(argv):
    del argv
    if not (FLAGS.model_dir and FLAGS.tag):
        raise app.UsageError("--model_dir and --tag are required.")
    try:
        entry = publish(FLAGS.model_dir, FLAGS.tag, FLAGS.data_dir, FLAGS.dataset_name, FLAGS.default_for,
                        FLAGS.notes, FLAGS.storage_dtype, FLAGS.release_url, FLAGS.output_dir)
    except (ValueError, download.DownloadError) as error:  # PublishError, unreadable data, a failed reload
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    float32 = entry["metric"].get("top1_accuracy_float32_weights")
    as_float32 = f" ({float32}% with the float32 weights)" if float32 is not None else ""
    if entry.get("packaged"):
        where = f"file zoo/pretrained/{entry['packaged']}"
    else:
        where = f"file {pathlib.Path(FLAGS.output_dir) / entry['filename']}: upload it to {entry['url']}"
    print(f"{entry['tag']}: top-1 accuracy {entry['metric']['top1_accuracy']}% on "
          f"{entry['metric']['evaluation']}{as_float32}; sha256 {entry['sha256']}; {where}.")


if __name__ == "__main__":
    from keras_gn import command_line

    define_flags()
    command_line.run(main, __doc__, __name__)
