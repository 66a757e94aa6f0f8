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

BiT's own recipe (BiT-HyperRule: schedule, resolution and MixUp chosen from
the dataset's size, a zero-initialised head, no weight decay) is
`bit_hyperrule` and `HyperRuleSchedule`; `examples/bit_finetune.py` runs it.
"""

import dataclasses

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


# ---------------------------------------------------------------- BiT-HyperRule


@dataclasses.dataclass(frozen=True)
class HyperRule:
    """BiT's fine-tuning hyper-parameters for one dataset (BiT-HyperRule).

    `supports`: the end of the linear warmup, the steps after which the
    learning rate drops 10x, and the last step. `precrop`, `crop`: images
    are resized to `precrop` (square) and randomly cropped to `crop` for
    training, resized to `crop` for evaluation. `mixup_alpha`: MixUp's Beta
    parameter, 0 for none.
    """

    supports: tuple
    mixup_alpha: float
    precrop: int
    crop: int

    @property
    def steps(self):
        return self.supports[-1]

    def with_steps(self, steps):
        """The same schedule compressed (or stretched) to `steps` steps."""
        scaled = tuple(max(1, round(s * steps / self.steps)) for s in self.supports[:-1])
        return dataclasses.replace(self, supports=(*scaled, steps))


def bit_hyperrule(dataset_size, image_size):
    """BiT-HyperRule for a dataset of `dataset_size` training images of
    `image_size` `(height, width)`: google-research/big_transfer
    `bit_hyperrule.py` (Kolesnikov et al. 2020, section 3.3).

    - schedule: fewer than 20k images: warmup 100 steps, decays after 200,
      300, 400, 500 steps in all; fewer than 500k: warmup 500, decays after
      3000, 6000, 9000, 10k in all; else warmup 500, decays after 6000,
      12k, 18k, 20k in all;
    - resolution: images smaller than 96x96 pixels (by area) are resized to
      160 and cropped to 128, others resized to 512 and cropped to 480;
    - MixUp with alpha 0.1 from 20k images on.
    """
    if dataset_size < 20_000:
        supports = (100, 200, 300, 400, 500)
    elif dataset_size < 500_000:
        supports = (500, 3000, 6000, 9000, 10_000)
    else:
        supports = (500, 6000, 12_000, 18_000, 20_000)
    height, width = image_size
    precrop, crop = (160, 128) if height * width < 96 * 96 else (512, 480)
    return HyperRule(supports, 0.0 if dataset_size < 20_000 else 0.1, precrop, crop)


def bit_learning_rate(global_batch_size, base_learning_rate=0.003, reference_batch_size=512):
    """BiT's peak learning rate, 0.003 at a batch of 512, scaled linearly
    with the batch (the BiT README's own smaller setting, batch 128 at
    0.001, is close to this rule's 0.00075)."""
    return base_learning_rate * global_batch_size / reference_batch_size


@keras.saving.register_keras_serializable(package="zoo")
class HyperRuleSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """BiT-HyperRule's learning rate at each step: linear warmup from 0 to
    `peak` over `supports[0]` steps, then `peak` divided by 10 for each of
    `supports[1:]` already passed (`bit_hyperrule.py` `get_lr`); the rate of
    the last interval after the end."""

    def __init__(self, peak, supports):
        self.peak, self.supports = float(peak), tuple(int(s) for s in supports)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = self.peak * step / self.supports[0]
        decays = sum(keras.ops.cast(step > s, "float32") for s in self.supports[1:-1])
        decayed = self.peak * keras.ops.power(0.1, decays)
        return keras.ops.where(step < self.supports[0], warmup, decayed)

    def get_config(self):
        return {"peak": self.peak, "supports": list(self.supports)}
