"""The pretrained-weights registry (data in `weights_registry.json`) and the
loading of weights into zoo models.

A registry entry describes one weight set, tagged `arch.tag` like timm's
(`resnet50_gn.in1k_detectron`): where it comes from (URL, sha256 or an
honest null with what else is checked, source, license), what it reaches
(dataset, metric) and how its inputs are prepared (input size, crop,
preprocessing). Its `format` says how the file is read: `keras` for a
`.weights.h5` of the zoo model, or one of the converters' sources
(`detectron`, `tensorpack`, `timm` for `.pth`/`.bin`/`.safetensors`, `bit`
for Big Transfer's `.npz`), converted on first use and cached.
An entry with `packaged` names a file shipped in `zoo/pretrained/` instead
of a URL; its sha256 is checked when it is loaded. Entries whose
`preprocessing.inside_model` is true were trained with their normalization
inside the model: builders then add a `zoo.Preprocessing` layer after the
input (see `include_preprocessing`), so the model takes RGB in [0, 255].
"""

import dataclasses
import functools
import hashlib
import json
import os
import pathlib

from zoo import download

REGISTRY_FILE = pathlib.Path(__file__).resolve().parent / "weights_registry.json"
PACKAGED_DIR = pathlib.Path(__file__).resolve().parent / "pretrained"
FORMATS = ("keras", "detectron", "tensorpack", "timm", "bit")
DATASET_ALIASES = ("imagenet", "cifar10")
DEFAULT_GROUPS = 32  # the paper's
# What weights may fix: architecture choices that change no weight shape,
# so that weights would load, and compute something else, without them.
BUILDER_ARGS = ("groups", "group_size", "weight_standardization")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How images are prepared: from RGB values in [0, 255], reorder the
    channels to `color`, divide by `scale`, subtract `mean`, divide by `std`
    (mean and std in the order of `color`). `inside_model`: the model does
    it itself and takes raw RGB [0, 255] values."""

    color: str = "RGB"
    scale: float = 1.0
    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)
    inside_model: bool = False


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    tag: str  # "arch.name"
    format: str
    source: str
    license: str
    dataset: str  # "imagenet-1k", "cifar10"
    classes: int
    metric: dict
    input_size: int
    crop_pct: float
    preprocessing: Preprocessing
    url: str = None
    filename: str = None
    sha256: str = None
    sha256_prefix: str = None  # where only the start of the digest is published
    verification: str = None  # what is checked where sha256 is null
    packaged: str = None
    default_for: str = None  # "imagenet" or "cifar10"
    builder_args: dict = None  # BUILDER_ARGS the weights were trained with, e.g. {"groups": 2}
    training: dict = None  # how weights trained here were made (train.publish)
    notes: str = ""

    @property
    def arch(self):
        return self.tag.split(".", 1)[0]


def _entry(record):
    record = dict(record)
    record["preprocessing"] = Preprocessing(**{
        k: tuple(v) if isinstance(v, list) else v for k, v in record["preprocessing"].items()})
    entry = WeightsEntry(**record)
    if entry.format not in FORMATS:
        raise ValueError(f"weights {entry.tag}: format {entry.format!r} is not one of {FORMATS}")
    if not (entry.packaged or (entry.url and entry.filename)):
        raise ValueError(f"weights {entry.tag}: needs `packaged` or `url` + `filename`")
    if not (entry.sha256 or entry.verification):
        raise ValueError(f"weights {entry.tag}: needs a sha256, or a `verification` note")
    if entry.packaged and not entry.sha256:
        raise ValueError(f"weights {entry.tag}: packaged weights need their sha256")
    unknown = set(entry.builder_args or {}) - set(BUILDER_ARGS)
    if unknown:
        raise ValueError(f"weights {entry.tag}: builder_args {sorted(unknown)} are not among {BUILDER_ARGS}")
    return entry


@functools.lru_cache(maxsize=None)
def registry():
    """{tag: WeightsEntry} for every registered weight set."""
    records = json.loads(REGISTRY_FILE.read_text())
    entries = {}
    for record in records:
        entry = _entry(record)
        if entry.tag in entries:
            raise ValueError(f"weights {entry.tag} are registered twice")
        entries[entry.tag] = entry
    return entries


def list_weights(arch=None):
    """Sorted weight tags, of one architecture or of all."""
    return sorted(tag for tag, e in registry().items() if arch is None or e.arch == arch)


def get_entry(tag):
    """The registry entry of `tag` ("arch.name")."""
    try:
        return registry()[tag]
    except KeyError:
        raise ValueError(
            f"Unknown weights {tag!r}. Registered weights: {list_weights() or 'none'}."
        ) from None


def resolve(arch, weights):
    """The registry entry that `weights=` names for `arch`, or None for a file.

    Raises:
        ValueError: naming what `weights` may be for this architecture.
    """
    available = list_weights(arch)
    if weights in DATASET_ALIASES:
        for tag in available:
            if registry()[tag].default_for == weights:
                return registry()[tag]
        others = sorted({e.arch for e in registry().values() if e.default_for == weights})
        elsewhere = f" {weights!r} weights exist for: {', '.join(others)}." if others else ""
        raise ValueError(
            f"No {weights!r} weights are registered for {arch} yet. Weights for "
            f"{arch}: {available or 'none'}; or pass weights=None, or the path of "
            f"a .weights.h5 file saved from this model.{elsewhere}"
        )
    tag = weights if "." in weights and not os.path.exists(weights) else f"{arch}.{weights}"
    if tag in registry():
        entry = registry()[tag]
        if entry.arch != arch:
            raise ValueError(f"weights {tag!r} are for {entry.arch}, not {arch}.")
        return entry
    if os.path.exists(weights):
        return None
    raise ValueError(
        f"weights={weights!r} is neither None, a registered tag for {arch} "
        f"({available or 'none registered'}), {' nor '.join(map(repr, DATASET_ALIASES))}, "
        "nor an existing .weights.h5 file."
    )


def grouping(arch, weights, groups, group_size):
    """`(groups, group_size)` of a builder: the caller's, else those the
    weights were trained with (their `builder_args`), else 32 groups.

    GN's grouping changes no weight shape, so weights load into a model of
    any grouping, and compute something else: a grouping that differs from
    the weights' is refused.
    """
    entry, args = _trained_with(arch, weights)
    trained = (args.get("groups", None if "group_size" in args else DEFAULT_GROUPS), args.get("group_size"))
    if groups is None and group_size is None:
        return trained
    if entry is not None and (groups, group_size) != trained:
        given = f"groups={groups}" if group_size is None else f"group_size={group_size}"
        wanted = f"groups={trained[0]}" if trained[1] is None else f"group_size={trained[1]}"
        raise ValueError(
            f"weights {entry.tag!r} were trained with {wanted}, not {given}: leave groups and "
            f"group_size unset (or pass {wanted}).")
    return groups, group_size


def weight_standardization(arch, weights, requested):
    """Whether a builder's convolutions standardize their kernels: as the
    caller asks, else as the weights were trained (their `builder_args`),
    else not. A request that differs from the weights' is refused."""
    entry, args = _trained_with(arch, weights)
    trained = bool(args.get("weight_standardization", False))
    if requested is None:
        return trained
    if entry is not None and bool(requested) != trained:
        raise ValueError(
            f"weights {entry.tag!r} were trained with weight_standardization={trained}, not "
            f"{requested}: leave weight_standardization unset (or pass {trained}).")
    return bool(requested)


def _trained_with(arch, weights):
    """`(entry, builder_args)` of registered `weights`; `(None, {})` for
    none or a file."""
    entry = resolve(arch, weights) if weights is not None else None
    return entry, (entry.builder_args or {}) if entry else {}


def weights_file(entry):
    """Local path of the entry's weights as a zoo-model `.weights.h5`,
    downloading and converting them if needed."""
    if entry.packaged:
        path = PACKAGED_DIR / entry.packaged
        if not path.exists():
            raise FileNotFoundError(
                f"The packaged weights {path} of {entry.tag} are missing; reinstall keras-gn."
            )
        digest = sha256_of(path)
        if digest != entry.sha256:
            raise ValueError(
                f"The packaged weights {path} of {entry.tag} are corrupt: their sha256 "
                f"{digest} is not the registered {entry.sha256}. Reinstall keras-gn "
                "(pip install --force-reinstall keras-gn, or git checkout the file)."
            )
        return path
    if entry.format == "keras":
        return download.fetch(entry.url, entry.filename, entry.sha256, validate=_check_h5)
    from zoo import convert

    converted = download.cached_path(f"{entry.tag}.weights.h5")
    if converted.exists():
        try:
            _check_h5(converted)
        except OSError:  # damaged in the cache: convert it again
            converted.unlink()
    if not converted.exists():

        def validate(path):
            _check_sha256_prefix(path, entry)
            convert.read_source(entry.format, path, entry.arch)

        original = download.fetch(entry.url, entry.filename, entry.sha256, validate=validate)
        convert.convert_file(entry.format, original, entry.arch, converted)
    return converted


def sha256_of(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _check_sha256_prefix(path, entry):
    if not entry.sha256_prefix:
        return
    digest = sha256_of(path)
    if not digest.startswith(entry.sha256_prefix):
        raise ValueError(
            f"{path}: sha256 {digest} does not start with the published {entry.sha256_prefix}"
        )


def _check_h5(path):
    import h5py

    with h5py.File(path, "r"):
        pass


def load_model_weights(model, arch, weights, include_top):
    """Loads `weights` (see the builders' docstrings) into `model`."""
    if weights is None:
        return
    entry = resolve(arch, weights)
    if entry is None:
        _load_file(model, weights)
        return
    if include_top and model.output_shape[-1] != entry.classes:
        raise ValueError(
            f"weights {entry.tag!r} have a {entry.classes}-class classifier but the "
            f"model has {model.output_shape[-1]} classes: pass classes={entry.classes}, "
            "or include_top=False and add a new head."
        )
    _copy_from_full_model(model, arch, weights_file(entry), entry)


def _load_file(model, path):
    try:
        model.load_weights(path)
    except ValueError as error:
        raise ValueError(
            f"{path} does not fit {model.name}: {error}. A weights file must be saved "
            "from the same builder (model.save_weights) with the same arguments."
        ) from error


def _copy_from_full_model(model, arch, path, entry):
    """Loads `path` into a full `arch` model built as the weights were
    trained, then copies layer by layer (by name) into `model`, which may
    lack the top."""
    import zoo

    full = zoo.get_model(arch)(include_top=True, classes=entry.classes, weights=None,
                               input_shape=model.input_shape[1:], **(entry.builder_args or {}))
    full.load_weights(path)
    for layer in model.layers:
        if layer.weights:
            source = full.get_layer(layer.name)
            for target_var, source_var in zip(layer.weights, source.weights, strict=True):
                target_var.assign(source_var)
