"""Copy a Functional or Sequential model while replacing some of its layers.

`convert_bn_to_gn` and `freeze_bn` are both "replace every BatchNormalization
by something else, keep the rest of the graph and its weights". This module
does that once, on top of `keras.models.clone_model`:

- every layer is cloned from its config and then given the original's weights
  exactly (`clone_model` alone re-initializes them);
- the replaced layers are called without the `training` and `mask` keyword
  arguments that Keras records for BatchNormalization calls (a plain
  `clone_model(..., clone_function=...)` fails on them);
- nested Functional and Sequential models are rewritten recursively, and a
  layer called several times stays one shared layer;
- a layer that hides target layers inside custom code (a subclassed layer or
  model) cannot be rewritten, and is reported with its class instead of being
  silently left unconverted.
"""

import keras
from keras.src.models.functional import Functional


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
    return [
        sub for sub in layer._flatten_layers(include_self=False) if is_target(sub)
    ]


def rewrite_layers(model, is_target, make_replacement, load_replacement, what):
    """Returns a copy of `model` in which every target layer is replaced.

    Args:
        model: a built Functional or Sequential Keras model.
        is_target: `fn(layer) -> bool`, which layers to replace.
        make_replacement: `fn(layer) -> new_layer`, an unbuilt replacement.
        load_replacement: `fn(old_layer, new_layer)`, called once the new
            model is built, to set the replacement's weights.
        what: short description of the rewrite for error messages, e.g.
            "convert_bn_to_gn".

    Returns:
        `(new_model, replaced)`, where `replaced` lists `(path, old_layer,
        new_layer)` in the order the layers were met.

    Raises:
        ValueError: when `model` is subclassed or not built, or when a target
            layer sits inside a layer this function cannot rewrite.
    """
    if not is_graph_model(model):
        raise ValueError(
            f"{what} rewrites Functional and Sequential models; received a "
            f"subclassed model of class {type(model).__name__} ('{model.name}'), "
            "whose graph is defined by Python code that cannot be rewritten. "
            "Rebuild it with the Functional API, or replace its layers in its "
            "own code."
        )
    if not model.built or (isinstance(model, keras.Sequential) and not model.inputs):
        raise ValueError(
            f"{what} needs a built model with known inputs; model '{model.name}' "
            "is not built. Start it with keras.Input(...) or call it on data "
            "first."
        )

    paths = layer_paths(model)
    copied = []  # (old, new) pairs whose weights are copied as they are
    replaced = []  # (path, old, new)
    replacement_ids = set()

    def clone_function(layer):
        if is_target(layer):
            new_layer = make_replacement(layer)
            replaced.append((paths.get(id(layer), layer.name), layer, new_layer))
            replacement_ids.add(id(new_layer))
            return new_layer
        hidden = _hidden_targets(layer, is_target)
        if hidden:
            raise ValueError(
                f"{what} cannot rewrite layer '{layer.name}' of class "
                f"{type(layer).__name__}: it contains "
                f"{len(hidden)} {type(hidden[0]).__name__} layer(s) (e.g. "
                f"'{hidden[0].name}') inside custom code. Only layers of "
                "Functional and Sequential models can be replaced."
            )
        new_layer = layer.__class__.from_config(layer.get_config())
        copied.append((layer, new_layer))
        return new_layer

    def call_function(layer, *args, **kwargs):
        if id(layer) in replacement_ids:
            kwargs.pop("training", None)
            mask = kwargs.pop("mask", None)
            if mask is not None:
                raise ValueError(
                    f"{what} cannot replace layer '{layer.name}': it is called "
                    f"with a mask, which {type(layer).__name__} does not take."
                )
        return layer(*args, **kwargs)

    if isinstance(model, keras.Sequential):
        # Sequential passes `training`/`mask` only to layers that take them.
        new_model = keras.models.clone_model(
            model, clone_function=clone_function, recursive=True
        )
    else:
        new_model = keras.models.clone_model(
            model,
            clone_function=clone_function,
            call_function=call_function,
            recursive=True,
        )

    for old, new in copied:
        _copy_weights(old, new)
    for _, old, new in replaced:
        load_replacement(old, new)
    return new_model, replaced


def _copy_weights(old, new):
    if len(old.weights) != len(new.weights):
        raise ValueError(
            f"Layer '{old.name}' ({type(old).__name__}) has {len(old.weights)} "
            f"weights but its clone has {len(new.weights)}; it cannot be copied "
            "exactly."
        )
    for old_weight, new_weight in zip(old.weights, new.weights):
        new_weight.assign(old_weight)
