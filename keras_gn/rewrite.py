"""Copy a Functional or Sequential model while replacing some of its layers.

`convert_bn_to_gn` and `freeze_bn` are both "replace every BatchNormalization
by something else, keep the rest of the graph and its weights". This module
does that once, on top of `keras.models.clone_model`:

- every layer is cloned from its config and then given the original's weights
  exactly (`clone_model` alone re-initializes them);
- the replaced layers are called without the `training` and `mask` keyword
  arguments that Keras records for BatchNormalization calls (a plain
  `clone_model(..., clone_function=...)` fails on them);
- nested Functional and Sequential models are rewritten recursively, a layer
  or model called several times stays one shared object, and inputs keep
  their names;
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


def _hidden_targets(operation, is_target):
    if not isinstance(operation, keras.layers.Layer):
        return []  # a keras.ops operation in the graph: no sublayers
    return [
        sub for sub in operation._flatten_layers(include_self=False) if is_target(sub)
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
    clones = {}  # id(original) -> clone, so shared layers and models stay shared
    copied = []  # (old, new) pairs whose weights are copied as they are
    replaced = []  # (path, old, new)
    replacement_ids = set()

    def clone_layer(layer):
        if id(layer) in clones:
            return clones[id(layer)]
        if is_graph_model(layer):
            new_layer = clone_graph_model(layer)
        elif is_target(layer):
            new_layer = make_replacement(layer)
            masked = any(
                node.arguments.kwargs.get("mask") is not None
                for node in layer._inbound_nodes
            )
            if masked and not new_layer.supports_masking:
                raise ValueError(
                    f"{what} cannot replace layer '{layer.name}': it is called "
                    f"with a mask, which {type(new_layer).__name__} cannot "
                    "honour."
                )
            replaced.append((paths.get(id(layer), layer.name), layer, new_layer))
            replacement_ids.add(id(new_layer))
        else:
            hidden = _hidden_targets(layer, is_target)
            if hidden:
                raise ValueError(
                    f"{what} cannot rewrite layer '{layer.name}' of class "
                    f"{type(layer).__name__}: it contains {len(hidden)} "
                    f"{type(hidden[0]).__name__} layer(s) (e.g. "
                    f"'{hidden[0].name}') inside custom code. Only layers of "
                    "Functional and Sequential models can be replaced."
                )
            new_layer = _clone_from_config(layer)
            if isinstance(layer, keras.layers.Layer):
                copied.append((layer, new_layer))
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

    new_model = clone_graph_model(model)
    for old, new in copied:
        _copy_weights(old, new)
    for _, old, new in replaced:
        load_replacement(old, new)
    return new_model, replaced


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
