"""Tests of the input pipelines on images made here, on the real CIFAR-10
(when KERAS_GN_CIFAR10 is set) and on TFDS mock data."""

import dataclasses
import os
import tarfile
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from train import data
from train import recipe


def make_folder(root, classes=("cat", "dog"), per_class=3, size=40):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
                tf.io.write_file(str(root / split / name / f"{i}.png"), tf.io.encode_png(image))
    return root


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    """Archives extract into a cache of the test's own."""
    cache = tmp_path / "data_cache"
    monkeypatch.setattr(data, "data_cache_dir", lambda: cache)
    return cache


def test_image_folder_directory_and_tar(tmp_path):
    folder = make_folder(tmp_path / "pets")
    with tarfile.open(tmp_path / "pets.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="pets")
    for path in (folder, tmp_path / "pets.tar.gz"):
        source = data.image_folder(path)
        assert (source.num_classes, source.train_examples, source.test_examples) == (2, 6, 6)
        labels = sorted(int(y) for _, y in source.train)
        assert labels == [0, 0, 0, 1, 1, 1]
        image, _ = next(iter(source.train))
        assert image.shape == (40, 44, 3) and image.dtype == tf.uint8


def test_bad_folders(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        data.image_folder(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="needs train/<class>/ and test/<class>/"):
        data.image_folder(tmp_path / "empty")
    folder = make_folder(tmp_path / "pets", classes=("cat", "dog", "emu"))
    (folder / "test" / "dog").rename(folder / "test" / "dingo")
    for f in (folder / "test" / "emu").iterdir():
        f.unlink()
    (folder / "test" / "emu").rmdir()
    with pytest.raises(ValueError, match=r"The class folders of .*pets/test and .*pets/train differ: test/ has no "
                                         r"folder for dog, emu; test/ has dingo, which train/ has not\."):
        data.image_folder(folder)


def _temp_listing():
    return set(os.listdir(tempfile.gettempdir()))


def test_an_archive_is_extracted_once_into_the_cache_and_never_into_temp(tmp_path, data_cache, capsys):
    with tarfile.open(tmp_path / "pets.tar.gz", "w:gz") as tar:
        tar.add(make_folder(tmp_path / "pets"), arcname="pets")
    before = _temp_listing()
    (data_cache / ".pets-0.partial-1").mkdir(parents=True)  # a stale partial extraction: not ours
    first = data.image_folder(tmp_path / "pets.tar.gz")
    assert capsys.readouterr().out.count("Extracting pets.tar.gz into") == 1
    second = data.image_folder(tmp_path / "pets.tar.gz")
    assert capsys.readouterr().out == ""  # reused
    assert first.files == second.files and all(f.startswith(str(data_cache)) for f in first.files)
    (extracted,) = [p for p in data_cache.iterdir() if not p.name.startswith(".")]
    digest = data._sha256(tmp_path / "pets.tar.gz")
    assert extracted.name == f"pets-{digest[:16]}"
    # A stale partial of this archive (a killed extraction) is cleaned by the next one.
    stale = data_cache / f".{extracted.name}.partial-99999"
    stale.mkdir()
    import shutil
    shutil.rmtree(extracted)
    data.image_folder(tmp_path / "pets.tar.gz")
    assert not stale.exists()
    assert _temp_listing() <= before


def test_a_refused_archive_leaves_nothing_behind(tmp_path, data_cache):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 2
        import io
        tar.addfile(info, io.BytesIO(b"hi"))
    before = _temp_listing()
    with pytest.raises(ValueError, match=r"--data_dir=.*evil.tar cannot be extracted: "):
        data.image_folder(evil)
    assert [p.name for p in data_cache.iterdir() if not p.name.endswith(".lock")] == []
    assert not (tmp_path / "escape.txt").exists() and _temp_listing() <= before


def test_unreadable_images_are_named(tmp_path):
    folder = make_folder(tmp_path / "pets")
    (folder / "train" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "test" / "cat" / "2.png").write_bytes(b"")
    source = data.image_folder(folder)
    bad = data.find_unreadable_images(source.files)
    assert sorted(bad) == sorted([str(folder / "train" / "dog" / "1.png"), str(folder / "test" / "cat" / "2.png")])


@pytest.mark.parametrize("name", ["imagenet", "cifar"])
def test_pipelines_batch_augment_and_center_crop(tmp_path, name):
    source = data.image_folder(make_folder(tmp_path / "pets", size=300 if name == "imagenet" else 32))
    r = recipe.RECIPES[name]
    train, test = data.pipelines(source, r, global_batch=4)
    x, y = next(iter(train))
    assert x.shape == (4, r.image_size, r.image_size, 3) and x.dtype == tf.float32
    assert float(tf.reduce_max(x)) <= 255.0 and y.shape == (4,)
    batches = [x.shape for x, _ in test]
    assert batches == [(4, r.image_size, r.image_size, 3), (2, r.image_size, r.image_size, 3)]


def shuffles(dataset):
    """(element dtypes, buffer size) of each shuffle in a tf.data pipeline."""
    found = []
    while dataset is not None:
        if type(dataset).__name__ == "_ShuffleDataset":
            dtypes = [spec.dtype for spec in tf.nest.flatten(dataset.element_spec)]
            found.append((dtypes, int(dataset._buffer_size)))
        dataset = getattr(dataset, "_input_dataset", None)
    return found


def test_imagenet_recipe_shuffles_encoded_examples_then_decodes(tmp_path):
    """A shuffle buffer of decoded ImageNet images would hold ~420 KB an image
    (8 GB for 20,000): large images are shuffled as file paths, all of them."""
    source = data.image_folder(make_folder(tmp_path / "pets", per_class=5, size=300))
    train, _ = data.pipelines(source, recipe.RECIPES["imagenet"], global_batch=2)
    assert shuffles(train) == [([tf.string, tf.int64], 10)]
    assert sorted(int(y) for _, y in train.unbatch().take(10)) == [0] * 5 + [1] * 5  # each file once an epoch


def test_cifar_recipe_shuffles_the_cached_decoded_images(tmp_path):
    source = data.image_folder(make_folder(tmp_path / "pets", size=32))
    train, _ = data.pipelines(source, recipe.CIFAR, global_batch=2)
    assert shuffles(train) == [([tf.uint8, tf.int64], 6)]
    # All of them, at CIFAR-10's size too (50,000 decoded images: 150 MB).
    train, _ = data.pipelines(data.fake(10, 32, num_examples=50_000), recipe.CIFAR, global_batch=2)
    assert shuffles(train) == [([tf.uint8, tf.int32], 50_000)]


@pytest.mark.parametrize("side", [1, 8, 16])
def test_cutout_is_a_clipped_square_of_the_fill(side):
    """DeVries & Taylor's cutout, checked on its output: only pixels of one
    square change, to the fill; the square is at most side x side, and
    shorter only where a border clips it; its place varies between draws."""
    image = tf.constant(np.random.default_rng(side).uniform(1, 255, (32, 32, 3)), tf.float32)
    fill = np.array([10.0, 20.0, 30.0], np.float32)
    centers = set()
    for seed in range(60):
        tf.random.set_seed(seed)
        out = data.cutout(image, side, fill).numpy()
        changed = np.any(out != image.numpy(), axis=-1)
        assert np.all(out[changed] == fill) and np.array_equal(out[~changed], image.numpy()[~changed])
        rows, cols = np.nonzero(changed)
        top, left = rows.min(), cols.min()
        bottom, right = rows.max() + 1, cols.max() + 1
        assert bottom - top <= side and right - left <= side
        assert (bottom - top == side) or top == 0 or bottom == 32
        assert (right - left == side) or left == 0 or right == 32
        centers.add((top, left))
    assert len(centers) > 40, f"only {len(centers)} distinct squares in 60 draws"


@pytest.mark.parametrize("name, size", [("cifar", 32), ("imagenet", 64)])
def test_augmentation_with_cutout_fills_with_the_dataset_mean(name, size):
    with_cutout = dataclasses.replace(recipe.RECIPES[name], cutout=16, image_size=size)
    augment = data.augmenter(with_cutout)
    image = tf.fill((size, size, 3), 200.0)
    mean_pixel = 255 * np.array(with_cutout.mean, np.float32)
    for _ in range(20):
        out = augment(image).numpy().reshape(-1, 3)
        filled = np.all(np.isclose(out, mean_pixel), axis=-1)
        assert 8 * 8 <= filled.sum() <= 16 * 16  # a centre on a corner leaves a quarter
        assert np.all(np.isclose(out[~filled], 200) | (out[~filled] == 0))  # the image or CIFAR's zero padding


def test_cifar_augmentation_is_an_exact_padded_crop_or_its_mirror():
    """Every output is a 32x32 window of the 4-pixel zero-padded image,
    pixel for pixel (or its left-right mirror): no resampling. Offsets and
    flips vary per image."""
    image = np.arange(1, 32 * 32 + 1, dtype=np.float32).reshape(32, 32, 1)  # unique, nonzero pixels
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    windows = {(r, c): padded[r:r + 32, c:c + 32] for r in range(9) for c in range(9)}
    augment = data.augmenter(recipe.RECIPES["cifar"])
    draws = tf.data.Dataset.from_tensors(image).repeat(200).map(augment)
    seen, flips = set(), 0
    for out in draws.as_numpy_iterator():
        matches = [(key, flip) for key, window in windows.items() for flip in (False, True)
                   if np.array_equal(out, window[:, ::-1] if flip else window)]
        assert matches, "an augmented image is not an exact window of the padded image"
        seen.add(matches[0][0])
        flips += matches[0][1]
    assert len(seen) >= 40, f"only {len(seen)} of 81 crop offsets in 200 draws"
    assert 60 <= flips <= 140, f"{flips} of 200 draws flipped"


def test_fake_data():
    source = data.fake(num_classes=7, image_size=16, num_examples=10)
    images = [x for x, _ in source.train]
    assert len(images) == 10 and images[0].shape == (16, 16, 3)
    assert np.array_equal(images[3], [x for x, _ in source.train][3])  # deterministic
    assert all(0 <= int(y) < 7 for _, y in source.train)


def test_tfds_with_mock_data():
    with tfds.testing.mock_data(num_examples=12):
        source = data.tfds_dataset("cifar10")
        assert source.num_classes == 10 and source.name == "tfds:cifar10"
        train, test = data.pipelines(source, recipe.CIFAR, global_batch=4)
        x, y = next(iter(train))
        assert x.shape == (4, 32, 32, 3)
        x, _ = next(iter(test))
        assert x.shape == (4, 32, 32, 3)
        # Without the CIFAR recipe's cache, the encoded records are shuffled, then decoded.
        train, _ = data.pipelines(source, recipe.RECIPES["imagenet"], global_batch=4)
        assert shuffles(train) == [([tf.string, tf.int64], 12)]
        x, _ = next(iter(train))
        assert x.shape == (4, 224, 224, 3)
    with pytest.raises(ValueError, match="--dataset=cifar11 is not a TFDS dataset"):
        data.tfds_dataset("cifar11")


@pytest.mark.slow
def test_real_cifar10():
    path = os.environ.get("KERAS_GN_CIFAR10")
    if not path or not os.path.exists(path):
        pytest.skip("set KERAS_GN_CIFAR10 to cifar10-jpeg.tar.gz")
    source = data.image_folder(path)
    assert (source.num_classes, source.train_examples, source.test_examples) == (10, 50000, 10000)
    train, test = data.pipelines(source, recipe.CIFAR, global_batch=64)
    x, y = next(iter(train))
    assert x.shape == (64, 32, 32, 3) and len(set(y.numpy().tolist())) > 3
    _, y = next(iter(test))  # a shuffled listing: the first test batch has many classes
    assert len(set(y.numpy().tolist())) > 3


class KerasGnTinyImages(tfds.core.GeneratorBasedBuilder):
    """A TFDS dataset made here: 8 training and 4 test images of 3 classes."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(20, 24, 3)), "label": tfds.features.ClassLabel(num_classes=3)}),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(8, seed=0), "test": self._generate_examples(4, seed=1)}

    def _generate_examples(self, count, seed):
        rng = np.random.default_rng(seed)
        for i in range(count):
            yield i, {"image": rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), "label": i % 3}


def test_tfds_prepares_and_reads_a_real_dataset(tmp_path):
    # download_and_prepare for real (it once failed on a missing dependency
    # of tensorflow-datasets), then the whole input pipeline.
    source = data.tfds_dataset("keras_gn_tiny_images", data_dir=str(tmp_path / "tfds"))
    assert (source.num_classes, source.train_examples, source.test_examples) == (3, 8, 4)
    assert (tmp_path / "tfds" / "keras_gn_tiny_images" / "1.0.0").is_dir()
    train, test = data.pipelines(source, recipe.CIFAR, global_batch=4)
    x, y = next(iter(train))
    assert x.shape == (4, 32, 32, 3) and x.dtype == tf.float32
    assert sorted(int(label) for _, labels in test for label in labels) == [0, 0, 1, 2]  # i % 3, i < 4
