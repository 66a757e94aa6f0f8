"""Input pipelines: TFDS datasets, image folders (directory or tar archive),
and fake data; keras-cv augmentation; parallel decoding, caching, prefetch.

Every source yields (uint8 RGB image, int label) examples; the model
normalizes its own inputs (`zoo.Preprocessing`), so pipelines hand it raw
[0, 255] pixels as float32.

- ImageNet recipe: random-resized crop (8%-100% of the area, aspect ratio
  3/4-4/3) to the image size and horizontal flips for training; shorter side
  resized to `eval_resize` and a center crop for evaluation.
- CIFAR recipe: 4-pixel zero padding, random crop back to the image size,
  horizontal flips; the decoded training set is cached in memory and
  shuffled whole each epoch (50,000 CIFAR images: 150 MB). Other recipes
  shuffle encoded examples (file paths, JPEG bytes) and decode after: a
  buffer of decoded ImageNet images would hold about 420 KB an image. The
  crop is an exact window of the padded image (`keras.layers.RandomCrop`):
  keras-cv 0.9's `RandomCrop` resamples through `crop_and_resize`, which
  drops a row or column of pixels in about a third of the crops.
- Either recipe: Cutout after the crops and flips where it asks for it.

A tar archive of an image folder is extracted once, into the package's cache
(`<cache>/data/<archive name>-<sha256 prefix>/`, `<cache>` as for the fused
op: `$KERAS_GN_CACHE_DIR` or `~/.cache/keras_gn`), and reused by later runs.
The extraction goes to a temporary folder beside it, renamed into place when
complete, under a file lock, so concurrent runs extract once and a killed or
refused extraction leaves nothing that a later run would trust (its partial
folder is removed then). Nothing is written to the system temp folder.

A corrupt image file stops the run: `find_unreadable_images` then names it
(see `python -m train`).
"""

import dataclasses
import fcntl
import hashlib
import os
import pathlib
import shutil
import tarfile
from collections.abc import Callable

import keras
import keras_cv
import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CACHE_LIMIT = 100_000  # examples of the CIFAR recipe kept decoded in memory
TFDS_ENCODED_SHUFFLE_BUFFER = 10_000  # TFDS records: ~1.1 GB of ImageNet JPEGs; files are shuffled too


@dataclasses.dataclass
class Source:
    """A dataset before batching.

    `encoded_train` / `encoded_test` yield small encoded examples (a file
    path, JPEG bytes, an index) that `decode` turns into (uint8 RGB image,
    int label); `train` / `test` are the decoded datasets. A shuffle of
    encoded examples may hold up to `encoded_shuffle_buffer` of them.
    """

    encoded_train: tf.data.Dataset
    encoded_test: tf.data.Dataset
    decode: Callable
    encoded_shuffle_buffer: int
    num_classes: int
    train_examples: int
    test_examples: int
    name: str
    files: tuple = ()  # the image files of a folder source (train and test)

    @property
    def train(self):
        return self.encoded_train.map(self.decode, num_parallel_calls=AUTOTUNE)

    @property
    def test(self):
        return self.encoded_test.map(self.decode, num_parallel_calls=AUTOTUNE)


def _decode_image(encoded, label):
    return tf.io.decode_image(encoded, channels=3, expand_animations=False), label


def _read_and_decode(path, label):
    return _decode_image(tf.io.read_file(path), label)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_cache_dir():
    from keras_gn.fused.builder import cache_dir

    return cache_dir() / "data"


def extracted_archive(archive):
    """The folder an image-folder tar `archive` is extracted to, extracting
    it on first use (see the module docstring)."""
    archive = pathlib.Path(archive)
    target = data_cache_dir() / f"{archive.name.split('.')[0]}-{_sha256(archive)[:16]}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if target.is_dir():  # another run extracted it meanwhile
            return target
        for stale in target.parent.glob(f".{target.name}.partial-*"):  # from a killed run
            shutil.rmtree(stale, ignore_errors=True)
        partial = target.parent / f".{target.name}.partial-{os.getpid()}"
        print(f"Extracting {archive.name} into {target} (once; later runs reuse it).", flush=True)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(partial, filter="data")
            os.replace(partial, target)
        except (tarfile.TarError, OSError) as error:
            raise ValueError(f"--data_dir={archive} cannot be extracted: {error}") from None
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return target


def image_folder(path):
    """An image folder: `train/<class>/*` and `test/<class>/*` (or `val/`),
    as a directory or a tar archive (extracted once into the cache)."""
    root = name = pathlib.Path(path)
    if not root.exists():
        raise ValueError(f"--data_dir={path} does not exist.")
    if root.is_file():
        if not tarfile.is_tarfile(root):
            raise ValueError(f"--data_dir={path} is a file but not a tar archive.")
        extracted = extracted_archive(root)
        candidates = sorted(p.parent for p in extracted.rglob("train") if p.is_dir())
        if not candidates:
            raise ValueError(f"{path} has no train/ folder inside.")
        root = candidates[0]
    test_dir = next((root / d for d in ("test", "val", "validation") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise ValueError(f"{root} needs train/<class>/ and test/<class>/ (or val/) folders.")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    missing = [c for c in classes if not (test_dir / c).is_dir()]
    extra = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name not in classes)
    if missing or extra:
        raise ValueError(
            f"The class folders of {test_dir} and {root / 'train'} differ: "
            + "; ".join(filter(None, [
                missing and f"{test_dir.name}/ has no folder for {', '.join(missing)}",
                extra and f"{test_dir.name}/ has {', '.join(extra)}, which train/ has not"]))
            + ". Both need the same class folders (a folder may be empty)."
        )

    def listing(split_dir):
        paths, labels = [], []
        for label, name in enumerate(classes):
            files = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            paths += [str(p) for p in files]
            labels += [label] * len(files)
        if not paths:
            raise ValueError(f"{split_dir} has no images in class folders {classes[:5]}...")
        # A fixed shuffle of the listing, so that a capped evaluation
        # (--steps_per_epoch) sees every class, not the first ones.
        order = np.random.default_rng(0).permutation(len(paths))
        return np.array(paths)[order], np.array(labels)[order]

    (train_paths, train_labels), (test_paths, test_labels) = listing(root / "train"), listing(test_dir)
    return Source(tf.data.Dataset.from_tensor_slices((train_paths, train_labels)),
                  tf.data.Dataset.from_tensor_slices((test_paths, test_labels)), _read_and_decode,
                  encoded_shuffle_buffer=len(train_paths),  # paths: all of them
                  num_classes=len(classes), train_examples=len(train_paths), test_examples=len(test_paths),
                  name=f"folder:{name.name}", files=(*train_paths, *test_paths))


def find_unreadable_images(paths):
    """The files among `paths` that cannot be read or decoded as images
    (decoded in parallel, as training would)."""

    def check(path):
        image, _ = _read_and_decode(path, 0)
        return path, tf.shape(image)[0]

    readable = tf.data.Dataset.from_tensor_slices(list(paths)).map(check, num_parallel_calls=AUTOTUNE)
    readable = readable.ignore_errors()
    good = {p.decode() for p, _ in readable.as_numpy_iterator()}
    return [p for p in paths if p not in good]


def tfds_dataset(name, data_dir=None):
    """A TFDS dataset with `image` and `label` features; evaluated on its
    `test` split, else `validation`."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"--dataset={name} is not a TFDS dataset ({str(error).splitlines()[0]}). Use e.g. "
            "cifar10, cifar100 or imagenet2012, or --dataset=folder with --data_dir."
        ) from None
    builder.download_and_prepare()  # nothing to do once prepared
    splits = builder.info.splits
    available = list(splits.keys()) or ["train", "test"]  # unprepared metadata: mocked data
    test_split = next((s for s in ("test", "validation") if s in available), None)
    if "train" not in available or test_split is None:
        raise ValueError(f"TFDS {name} needs a train split and a test or validation split; it has {available}.")
    load = dict(as_supervised=True, decoders={"image": tfds.decode.SkipDecoding()})
    train = builder.as_dataset(split="train", shuffle_files=True, **load)
    test = builder.as_dataset(split=test_split, **load)

    def count(split, ds):
        if split in splits and splits[split].num_examples:
            return splits[split].num_examples
        return int(ds.reduce(0, lambda n, _: n + 1))

    return Source(train, test, _decode_image, encoded_shuffle_buffer=TFDS_ENCODED_SHUFFLE_BUFFER,
                  num_classes=builder.info.features["label"].num_classes,
                  train_examples=count("train", train), test_examples=count(test_split, test),
                  name=f"tfds:{name}")


def fake(num_classes, image_size, num_examples=1024):
    """Random images and labels, generated in the graph (no files)."""

    def example(i):
        seed = tf.stack([i, 0])
        image = tf.random.stateless_uniform((image_size, image_size, 3), seed, 0, 256, tf.int32)
        label = tf.random.stateless_uniform((), seed + 1, 0, num_classes, tf.int32)
        return tf.cast(image, tf.uint8), label

    indices = tf.data.Dataset.range(num_examples)
    return Source(indices, indices, example, encoded_shuffle_buffer=num_examples, num_classes=num_classes,
                  train_examples=num_examples, test_examples=num_examples, name="fake")


def augmenter(recipe):
    """The augmentation of a recipe, for single images (float32, HWC): its
    crops and flips, then Cutout where the recipe has it."""
    flip = keras_cv.layers.RandomFlip("horizontal")
    size = recipe.image_size
    if recipe.name == "imagenet":
        crop = keras_cv.layers.RandomCropAndResize(
            target_size=(size, size), crop_area_factor=(0.08, 1.0), aspect_ratio_factor=(3 / 4, 4 / 3))

        def crop_and_flip(image):
            return flip(crop(image))
    else:
        crop = keras.layers.RandomCrop(size, size)

        def crop_and_flip(image):
            image = tf.image.resize_with_crop_or_pad(image, size + 8, size + 8)  # 4 px each side
            return flip(crop(image, training=True))

    if not recipe.cutout:
        return crop_and_flip
    mean_pixel = 255.0 * tf.constant(recipe.mean, tf.float32)
    return lambda image: cutout(crop_and_flip(image), recipe.cutout, mean_pixel)


def cutout(image, side, fill):
    """Cutout (DeVries & Taylor 2017): a `side` x `side` square centred on a
    uniformly random pixel, clipped at the image's borders, set to `fill`
    (one value per channel)."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    center_y = tf.random.uniform((), 0, height, tf.int32)
    center_x = tf.random.uniform((), 0, width, tf.int32)
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    inside = ((rows >= center_y - side // 2) & (rows < center_y - side // 2 + side)
              & (cols >= center_x - side // 2) & (cols < center_x - side // 2 + side))
    return tf.where(inside[:, :, None], tf.cast(fill, image.dtype), image)


def center_crop(recipe):
    size = recipe.image_size
    if not recipe.eval_resize:
        return lambda image: tf.image.resize(image, (size, size)) if image.shape[0] != size else image

    def resize_and_crop(image):
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = recipe.eval_resize / tf.reduce_min(shape)
        image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32))
        return tf.image.resize_with_crop_or_pad(image, size, size)

    return resize_and_crop


def pipelines(source, recipe, global_batch, seed=0):
    """(train, test) batched datasets: train repeats, shuffled, augmented;
    test is center-cropped and kept whole (the last batch may be smaller)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    augment, evaluate = augmenter(recipe), center_crop(recipe)
    shuffle = dict(seed=seed, reshuffle_each_iteration=True)
    if recipe.name == "cifar" and source.train_examples <= CACHE_LIMIT:
        train = source.train.cache().shuffle(source.train_examples, **shuffle)
    else:
        buffer = min(source.train_examples, source.encoded_shuffle_buffer)
        train = source.encoded_train.shuffle(buffer, **shuffle).map(source.decode, num_parallel_calls=AUTOTUNE)
    train = (train.repeat()
             .map(lambda x, y: (augment(tf.cast(x, tf.float32)), y), num_parallel_calls=AUTOTUNE)
             .batch(global_batch, drop_remainder=True)
             .prefetch(AUTOTUNE)
             .with_options(options))
    test = source.test.cache() if source.test_examples <= CACHE_LIMIT // 5 else source.test
    test = (test.map(lambda x, y: (evaluate(tf.cast(x, tf.float32)), y), num_parallel_calls=AUTOTUNE)
            .batch(global_batch)
            .prefetch(AUTOTUNE)
            .with_options(options))
    return train, test
