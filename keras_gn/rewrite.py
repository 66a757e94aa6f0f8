"""Copy a Keras model while replacing some of its layers.

`convert_bn_to_gn` and `freeze_bn` are both "replace every BatchNormalization
by something else, keep the rest of the model and its weights". This module
does that once, on top of `keras.models.clone_model`:

- every other layer is copied as an object (`copy.deepcopy`, its variables
  made anew with the same values), without a round trip through its config:
  layers whose class cannot rebuild itself from its own config convert too.
  A layer that cannot be deep-copied (e.g. it holds a lookup table) is rebuilt
  from its config and given the original's weights; one that allows neither
  is reused as it is, sharing its weights with the original model, and is
  listed as such;
- the replaced layers are called without the `training` and `mask` keyword
  arguments that Keras records for BatchNormalization calls (a plain
  `clone_model(..., clone_function=...)` fails on them);
- target layers inside custom (subclassed) layers and models are replaced
  too, in the copy: each one the custom code holds (as an attribute, or in a
  list, tuple or dict attribute) is swapped for its replacement, built for
  the same input shape, and nested graph models inside are rewritten. Such a
  copy keeps its class's `get_config`, which would rebuild the original
  layers, so its `get_config` is made to raise an error that says how to
  save the model (weights only) and load it again;
- nested Functional and Sequential models are rewritten recursively, a layer
  or model called several times stays one shared object, and inputs keep
  their names.

The original model is not changed.
"""

import contextlib
import copy
import sys

import keras
from keras.src.models.functional import Functional
from keras.src.saving.keras_saveable import KerasSaveable
from keras.src.utils import tracking


def is_batch_norm(layer):
    """The layers `convert_bn_to_gn` and `freeze_bn` replace."""
    return isinstance(layer, keras.layers.BatchNormalization)


def is_graph_model(layer):
    return isinstance(layer, (Functional, keras.Sequential))


def layer_paths(model):
    """Maps `id(layer)` to a path such as "backbone/conv1_bn" for all layers.

    Nested Functional and Sequential models are entered; a shared layer keeps
    the first path it is found under.
    """
    paths = {}

    def visit(container, prefix):
        for layer in container.layers:
            if id(layer) in paths:
                continue
            paths[id(layer)] = prefix + layer.name
            if is_graph_model(layer):
                visit(layer, prefix + layer.name + "/")

    visit(model, "")
    return paths


def _hidden_targets(layer, is_target):
    return [sub for sub in layer._flatten_layers(include_self=False) if is_target(sub)]


def rewrite_layers(model, is_target, make_replacement, load_replacement, what):
    """Returns a copy of `model` in which every target layer is replaced.

    Args:
        model: a built Keras model: Functional, Sequential or subclassed.
        is_target: `fn(layer) -> bool`, which layers to replace.
        make_replacement: `fn(layer) -> new_layer`, an unbuilt replacement.
        load_replacement: `fn(old_layer, new_layer)`, called once the new
            layer is built, to set its weights (not for an old layer that was
            never built: it has none).
        what: short description of the rewrite for error messages, e.g.
            "convert_bn_to_gn".

    Returns:
        `(new_model, replaced, shared)`: `replaced` lists `(path, old_layer,
        new_layer)` in the order the layers were met (a path such as
        "backbone/spp/batch_normalization" for one inside a custom layer);
        `shared` lists the paths of the layers reused from `model` because
        they could be neither copied nor rebuilt.

    A subclassed model is deep-copied and its target layers are swapped like
    those of a custom layer.

    Raises:
        ValueError: when `model` is not built, or when a target layer sits
            inside a custom layer (or subclassed model) that can be neither
            copied nor rebuilt from its config.
    """
    if not model.built or (isinstance(model, keras.Sequential) and not model.inputs):
        raise ValueError(
            f"{what} needs a built model with known inputs; model '{model.name}' "
            "is not built. Start it with keras.Input(...) or call it on data "
            "first."
        )

    paths = layer_paths(model) if is_graph_model(model) else {}
    clones = {}  # id(original) -> clone, so shared layers and models stay shared
    rebuilt = []  # (old, new): rebuilt from config, weights copied once built
    custom = []  # (path, new): copies of custom layers with targets inside
    replaced = []  # (path, old, new)
    shared = []  # paths of layers reused as they are
    replacement_ids = set()

    def replace(layer, path):
        new_layer = make_replacement(layer)
        replaced.append((path, layer, new_layer))
        replacement_ids.add(id(new_layer))
        return new_layer

    def clone_layer(layer):
        if id(layer) in clones:
            return clones[id(layer)]
        path = paths.get(id(layer), layer.name)
        if is_graph_model(layer):
            new_layer = clone_graph_model(layer)
        elif is_target(layer):
            masked = any(
                node.arguments.kwargs.get("mask") is not None
                for node in layer._inbound_nodes
            )
            new_layer = replace(layer, path)
            if masked and not new_layer.supports_masking:
                raise ValueError(
                    f"{what} cannot replace layer '{layer.name}': it is called "
                    f"with a mask, which {type(new_layer).__name__} cannot "
                    "honour."
                )
        elif not isinstance(layer, keras.layers.Layer):
            new_layer = _clone_from_config(layer)  # a keras.ops operation: no state
        else:
            hidden = _hidden_targets(layer, is_target)
            new_layer, how = _copy_layer(layer)
            if how == "rebuilt":
                rebuilt.append((layer, new_layer))
            elif how == "shared":
                if hidden:
                    raise ValueError(
                        f"{what} cannot rewrite layer '{layer.name}' of class "
                        f"{type(layer).__name__}: it contains {len(hidden)} "
                        f"{type(hidden[0]).__name__} layer(s) (e.g. "
                        f"'{hidden[0].name}') inside custom code, and it can be "
                        "neither copied (copy.deepcopy) nor rebuilt from its "
                        "config, so they cannot be replaced without changing "
                        "the original model."
                    )
                shared.append(path)
            if hidden:
                custom.append((path, new_layer))
        clones[id(layer)] = new_layer
        return new_layer

    def call_layer(layer, *args, **kwargs):
        if id(layer) in replacement_ids:
            # Recorded for BatchNormalization calls; the replacements take
            # neither. A mask still reaches the layers after a replacement
            # that supports masking: Keras passes it along the tensor.
            kwargs.pop("training", None)
            kwargs.pop("mask", None)
        return layer(*args, **kwargs)

    def clone_graph_model(graph_model):
        if isinstance(graph_model, keras.Sequential):
            # Sequential keeps its input's name and passes `training`/`mask`
            # only to layers whose call() takes them.
            return keras.models.clone_model(graph_model, clone_function=clone_layer)
        # New inputs named like the original InputLayers (clone_model's own
        # would be named after internal tensor names).
        input_tensors = keras.tree.map_structure(_like_input, graph_model.input)
        return keras.models.clone_model(
            graph_model,
            input_tensors=input_tensors,
            clone_function=clone_layer,
            call_function=call_layer,
        )

    def replace_inside(path, layer):
        """Swaps the targets inside a custom layer's copy; returns how many."""
        swapped = {}  # id(old) -> new: a sublayer held by two owners stays one layer
        for owner, owner_path in _sublayer_owners(layer, path):
            for sub in list(owner._layers):
                sub_path = _join(owner_path, sub.name)
                if id(sub) in swapped:
                    new_sub = swapped[id(sub)]
                elif is_target(sub):
                    new_sub = replace(sub, sub_path)  # loaded by the caller
                    if sub.built:  # else never called: its replacement stays unbuilt too
                        with _name_scope(owner_path):  # variable paths as the original's
                            new_sub.build(_built_input_shape(sub))
                elif is_graph_model(sub) and _hidden_targets(sub, is_target):
                    for key, inner_path in layer_paths(sub).items():
                        paths.setdefault(key, f"{sub_path}/{inner_path}")
                    new_sub = clone_graph_model(sub)  # its targets: replaced, loaded by the caller
                else:
                    continue
                _swap_sublayer(owner, sub, new_sub)
                swapped[id(sub)] = new_sub
        return len(swapped)

    if is_graph_model(model):
        new_model = clone_graph_model(model)
    else:  # a subclassed model: its graph is Python code, its layers are swapped
        try:
            new_model = _deep_copy(model)
        except Exception as error:  # noqa: BLE001
            raise ValueError(
                f"{what} cannot copy the subclassed model '{model.name}' of class "
                f"{type(model).__name__} ({type(error).__name__}: {error}), so its "
                "layers cannot be replaced without changing it. Rebuild it with the "
                "Functional API, or replace its layers in its own code."
            ) from None
        custom.append(("", new_model))
    # Once the copies are built: weights into the rebuilt layers, then into
    # the replacements, then the targets inside custom layers (whose nested
    # graph models may add rebuilt layers and replacements of their own).
    copied, loaded, entered = 0, 0, 0
    while (copied, loaded, entered) != (len(rebuilt), len(replaced), len(custom)):
        for old, new in rebuilt[copied:]:
            _copy_weights(old, new)
        copied = len(rebuilt)
        for _, old, new in replaced[loaded:]:
            if old.built:
                load_replacement(old, new)
        loaded = len(replaced)
        for path, layer in custom[entered:]:
            entered += 1
            if replace_inside(path, layer):
                _refuse_config(layer, what)
    return new_model, replaced, shared


def _sublayer_owners(layer, path):
    """`(owner, owner_path)` for `layer` and every layer tracked inside it,
    stopping at nested graph models (rewritten as a whole)."""
    found, seen = [], set()

    def visit(owner, owner_path):
        if id(owner) in seen:
            return
        seen.add(id(owner))
        found.append((owner, owner_path))
        for sub in owner._layers:
            if not is_graph_model(sub):
                visit(sub, _join(owner_path, sub.name))

    visit(layer, path)
    return found


def _join(path, name):
    return f"{path}/{name}" if path else name


def _built_input_shape(layer):
    shapes = getattr(layer, "_build_shapes_dict", None)
    if shapes and len(shapes) == 1:
        return tuple(next(iter(shapes.values())))
    spec = layer.input_spec
    if spec is not None and not isinstance(spec, (list, tuple)) and spec.ndim:
        shape = [None] * spec.ndim
        for axis, size in (spec.axes or {}).items():
            shape[axis] = size
        return tuple(shape)
    raise ValueError(
        f"Layer '{layer.name}' ({type(layer).__name__}) inside custom code was "
        "never built, so the shape to build its replacement for is unknown. "
        "Call the model on data once before converting it."
    )


def _replaced_in(value, old, new, depth=0):
    """`value` with `old` replaced by `new`: the same list or dict changed in
    place (Keras tracks those objects), a new tuple, or `value` itself."""
    if value is old:
        return new
    if depth > 2:
        return value
    if isinstance(value, list):
        for i, item in enumerate(value):
            changed = _replaced_in(item, old, new, depth + 1)
            if changed is not item:
                list.__setitem__(value, i, changed)  # bypasses Keras' tracking
        return value
    if isinstance(value, dict):
        for key, item in list(value.items()):
            changed = _replaced_in(item, old, new, depth + 1)
            if changed is not item:
                dict.__setitem__(value, key, changed)
        return value
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        items = [_replaced_in(item, old, new, depth + 1) for item in value]
        if any(a is not b for a, b in zip(items, value)):
            return type(value)(items)
    return value


def _swap_sublayer(owner, old, new):
    """Puts `new` wherever `owner` holds `old`: its tracked layers (so that
    weights, saving and `_flatten_layers` see `new`) and its attributes (so
    that its `call` uses `new`)."""
    tracker = getattr(owner, "_tracker", None)
    if tracker is not None and tracker.is_in_store("layers", old):
        tracker.replace_tracked_value("layers", old, new)
    else:
        _replaced_in(owner._layers, old, new)
    for name, value in list(vars(owner).items()):
        if name in ("_layers", "_tracker"):
            continue
        changed = _replaced_in(value, old, new)
        if changed is not value:
            object.__setattr__(owner, name, changed)


def _refuse_config(layer, what):
    cls = type(layer).__name__

    def get_config():
        raise ValueError(
            f"Layer '{layer.name}' ({cls}) had layers replaced inside its own code "
            f"by {what}; {cls}'s config would rebuild the originals, so this model "
            "cannot be saved or cloned as an architecture. Save its weights "
            "(model.save_weights('model.weights.h5')), and to load them build the "
            f"original model, apply {what} the same way and call load_weights."
        )

    object.__setattr__(layer, "get_config", get_config)


def _copy_layer(layer):
    """A copy of a built layer that is not in the way of the original:
    `(copy, "copied")` (deep-copied, its variables new), `(rebuilt,
    "rebuilt")` (from its config, unbuilt: weights copied once built) or
    `(layer, "shared")` when neither works."""
    try:
        return _deep_copy(layer), "copied"
    except Exception:  # noqa: BLE001 - any object may refuse deepcopy
        pass
    try:
        return _clone_from_config(layer), "rebuilt"
    except Exception:  # noqa: BLE001 - third-party from_config bugs
        return layer, "shared"


def _deep_copy(layer):
    """`copy.deepcopy(layer)`, attribute by attribute, without its place in
    the original graph and with new variables (created in the current scope,
    e.g. a distribution strategy's) holding the original values."""
    memo = {id(module): module for module in list(sys.modules.values())}  # shared, not copied
    memo.update({id(layer._inbound_nodes): [], id(layer._outbound_nodes): []})
    for variable in layer.variables:
        memo[id(variable)] = _new_variable(variable)
    with _copying_keras_objects():
        return copy.deepcopy(layer, memo)


@contextlib.contextmanager
def _copying_keras_objects():
    """While active, `copy.deepcopy` copies Keras objects (layers, models,
    optimizers, ...) by their attributes. By default they deep-copy through
    pickling, which Keras implements as a save to and load from the `.keras`
    format: a config round trip, the very thing a layer that cannot rebuild
    itself from its config fails."""
    patched = [(KerasSaveable, _copy_by_attributes)]
    patched += [(cls, _copy_tracked_container) for cls in _TRACKED_CONTAINERS]
    for cls, method in patched:
        cls.__deepcopy__ = method
    try:
        yield
    finally:
        for cls, _ in patched:
            del cls.__deepcopy__


# Lists, dicts and sets that Keras' tracker wraps a layer's attributes in;
# their own `append`, `__setitem__`, ... would track the items again (and
# fail on a built layer).
_TRACKED_CONTAINERS = (tracking.TrackedList, tracking.TrackedDict, tracking.TrackedSet,
                       tracking.TrackedOrderedDict)


def _copy_tracked_container(container, memo):
    new = type(container).__new__(type(container))
    memo[id(container)] = new
    base = type(container).__mro__[1]  # list, dict, set or OrderedDict
    if isinstance(container, dict):
        base.update(new, {k: copy.deepcopy(v, memo) for k, v in container.items()})
    else:
        base.__init__(new, [copy.deepcopy(v, memo) for v in container])
    vars(new).update(copy.deepcopy(vars(container), memo))
    return new


def _copy_by_attributes(obj, memo):
    # Keras' __new__ gives each layer its own `build` and `quantize` wrappers,
    # closures over the layer itself: the copy needs its own, or its first
    # call would build the original.
    new = type(obj).__new__(type(obj))
    own = {name: vars(new)[name] for name in _PER_INSTANCE if name in vars(new)}
    memo[id(obj)] = new
    state = copy.deepcopy({k: v for k, v in vars(obj).items() if k not in own}, memo)
    if isinstance(obj, keras.Model):  # compiled functions of the original's graph
        for name in ("train_function", "test_function", "predict_function"):
            if name in state:
                state[name] = None
    vars(new).update(state)  # not through __setattr__: no tracking side effects
    vars(new).update(own)
    return new


_PER_INSTANCE = ("build", "quantize")


def _new_variable(variable):
    with _name_scope(variable.path.rpartition("/")[0]):
        return keras.Variable(
            initializer=keras.ops.convert_to_numpy(variable),  # a value: a variable would be shared
            shape=variable.shape,
            dtype=variable.dtype,
            trainable=variable.trainable,
            autocast=variable._autocast,
            aggregation=variable.aggregation,
            synchronization=variable.synchronization,
            name=variable.name,
        )


@contextlib.contextmanager
def _name_scope(path):
    """Keras name scopes for a path such as "backbone/block", one per name."""
    with contextlib.ExitStack() as stack:
        for name in filter(None, path.split("/")):
            stack.enter_context(keras.name_scope(name))
        yield


def _clone_from_config(layer):
    """A new, unbuilt layer like `layer` (what `clone_model` does by default)."""
    if isinstance(layer, keras.layers.Lambda):
        # Around the same Python function: one rebuilt from its serialized
        # bytecode loses the function's module globals (keras-cv's CSPDarkNet
        # has `Lambda(lambda x: keras.activations.silu(x))`).
        return keras.layers.Lambda(
            layer.function,
            output_shape=layer._output_shape,
            mask=layer.mask,
            arguments=layer.arguments,
            name=layer.name,
            dtype=layer.dtype_policy,
            trainable=layer.trainable,
        )
    return layer.__class__.from_config(layer.get_config())


def _like_input(tensor):
    return keras.Input(
        batch_shape=tensor.shape,
        dtype=tensor.dtype,
        sparse=tensor.sparse,
        ragged=tensor.ragged,
        name=tensor._keras_history.operation.name,
    )


def _copy_weights(old, new):
    if len(old.weights) != len(new.weights):
        raise ValueError(
            f"Layer '{old.name}' ({type(old).__name__}) has {len(old.weights)} "
            f"weights but its clone has {len(new.weights)}; it cannot be copied "
            "exactly."
        )
    for old_weight, new_weight in zip(old.weights, new.weights):
        new_weight.assign(old_weight)
