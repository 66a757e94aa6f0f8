"""Fine-tuning a zoo model on a new dataset, the paper's way.

The recipe (`examples/finetune.py` runs it):

1. `backbone = zoo.resnet50_gn(weights="imagenet", include_top=False,
   pooling="avg")`, then `model = with_new_head(backbone, classes)`.
2. Train the new head with the backbone frozen (`backbone.trainable =
   False`), a few epochs at a normal learning rate.
3. Unfreeze (`backbone.trainable = True`), recompile with a learning rate
   about 10x lower, train the whole network.
4. Throughout, weight decay applies to convolution and dense kernels but not
   to normalization gamma/beta (the paper's fine-tuning setting):
   `sgd(...)` below does that.

With Group Normalization there is no BatchNormalization-freezing trap: GN
has no moving statistics, computes the same thing in training and
inference, and does not depend on the batch size, so freezing, unfreezing
and small fine-tuning batches need no special care (with BN, a frozen
backbone must also be run in inference mode and small batches give noisy
statistics).
"""

import keras

from zoo import optimizers


def with_new_head(backbone, classes, dropout=0.0, classifier_activation="softmax"):
    """`backbone` (pooled features, e.g. `include_top=False, pooling="avg"`)
    followed by dropout and a new `classes`-way classifier."""
    if len(backbone.output_shape) != 2:
        raise ValueError(
            f"the backbone must output pooled features (batch, channels); "
            f"{backbone.name} outputs {backbone.output_shape}: build it with "
            "include_top=False and pooling='avg'."
        )
    inputs = keras.Input(backbone.input_shape[1:])
    x = backbone(inputs)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(classes, activation=classifier_activation, name="head")(x)
    return keras.Model(inputs, outputs, name=f"{backbone.name}_finetune")


def sgd(learning_rate, weight_decay=1e-4, momentum=0.9):
    """SGD with momentum and the papers' L2 weight decay (`zoo.optimizers`),
    which skips gamma/beta."""
    return optimizers.sgd(learning_rate, weight_decay, momentum, decay_norm_parameters=False)
