"""Training recipes: the paper's ImageNet recipe and a CIFAR one.

ImageNet (Wu & He 2018, section 4.1; Goyal et al. 2017): 100 epochs; SGD
with momentum 0.9; learning rate 0.1 per 256 images of global batch (linear
scaling: 0.1 * N / 32 with N images per GPU on the paper's 8 GPUs), divided
by 10 at epochs 30, 60 and 90 (scaled to `--epochs`), optional linear
warm-up; weight decay 1e-4 on all weights, gamma and beta included (a flag
excludes them); 224 px random-resized crops and flips, center-crop
evaluation.

CIFAR (He et al. 2016, section 4.2): batch 128, learning rate 0.1 per 128
images, divided by 10 at 50% and 75% of the epochs (He et al.: iterations
32k and 48k of 64k), weight decay 1e-4, momentum 0.9; 4-pixel padding with
random 32 px crops, and flips.

Beyond the papers, on request (`--schedule=cosine`, `--cutout`): a cosine
decay of the rate to 0 over the epochs instead of the steps (Loshchilov &
Hutter 2017), and Cutout (DeVries & Taylor 2017): a square of the training
image, centred anywhere in it and clipped at its borders, set to the
dataset mean (0 after the model's normalization).

Weight decay is the papers' L2 term, added to the gradient before the
momentum (`zoo.optimizers.SGD`), not Keras' decoupled decay, which with
momentum 0.9 is about 10 times weaker at the same value.
"""

import dataclasses

import keras
import numpy as np


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    per_replica_batch_size: int
    base_learning_rate: float  # per `reference_batch` images of global batch
    reference_batch: int
    decay_at: tuple  # fractions of the epochs where the rate is divided by 10
    weight_decay: float
    image_size: int
    eval_resize: int  # shorter side before the center crop (0: no crop)
    mean: tuple  # RGB input normalization (of values in [0, 1]) inside the model
    std: tuple
    schedule: str = "step"  # or "cosine": from the peak to 0 over the epochs
    cutout: int = 0  # side in pixels of the training images' Cutout square; 0: none

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}; valid: {', '.join(map(repr, SCHEDULES))}.")
        if not 0 <= self.cutout <= self.image_size:
            raise ValueError(f"cutout={self.cutout}; valid: 0 (none) to the image size, {self.image_size}.")


SCHEDULES = ("step", "cosine")


IMAGENET = Recipe("imagenet", epochs=100, per_replica_batch_size=32, base_learning_rate=0.1,
                  reference_batch=256, decay_at=(0.3, 0.6, 0.9), weight_decay=1e-4,
                  image_size=224, eval_resize=256,
                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
CIFAR = Recipe("cifar", epochs=160, per_replica_batch_size=128, base_learning_rate=0.1,
               reference_batch=128, decay_at=(0.5, 0.75), weight_decay=1e-4,
               image_size=32, eval_resize=0,
               mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))  # CIFAR-10
RECIPES = {r.name: r for r in (IMAGENET, CIFAR)}


def preprocessing(recipe):
    """The `zoo.Preprocessing` layer a model trained from scratch starts
    with: RGB [0, 255] -> (x / 255 - mean) / std with the recipe's dataset
    statistics (ImageNet's, or CIFAR-10's)."""
    import zoo

    return zoo.Preprocessing("RGB", 255.0, recipe.mean, recipe.std, name="preprocessing")


def learning_rate(recipe, global_batch, base_learning_rate=None):
    """Linear scaling: the base rate per `reference_batch` images."""
    base = recipe.base_learning_rate if base_learning_rate is None else base_learning_rate
    return base * global_batch / recipe.reference_batch


class StepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then divided by 10 at each boundary step."""

    def __init__(self, peak, boundaries, warmup_steps=0):
        self.peak, self.boundaries, self.warmup_steps = float(peak), [int(b) for b in boundaries], int(warmup_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        decays = sum(keras.ops.cast(step >= b, "float32") for b in self.boundaries) if self.boundaries else 0.0
        rate = self.peak * keras.ops.power(0.1, decays)
        if self.warmup_steps:
            warm = self.peak * (step + 1.0) / self.warmup_steps
            rate = keras.ops.where(step < self.warmup_steps, keras.ops.minimum(warm, rate), rate)
        return rate

    def get_config(self):
        return {"peak": self.peak, "boundaries": self.boundaries, "warmup_steps": self.warmup_steps}


def schedule(recipe, epochs, steps_per_epoch, peak, warmup_epochs=0):
    """The recipe's learning-rate schedule: the steps at `decay_at`, or a
    cosine to 0 at the last step; both after the linear warm-up."""
    warmup_steps = int(warmup_epochs * steps_per_epoch)
    if recipe.schedule == "cosine":
        decay_steps = max(epochs * steps_per_epoch - warmup_steps, 1)
        if not warmup_steps:
            return keras.optimizers.schedules.CosineDecay(peak, decay_steps)
        return keras.optimizers.schedules.CosineDecay(0.0, decay_steps, warmup_target=peak,
                                                      warmup_steps=warmup_steps)
    boundaries = [int(round(f * epochs)) * steps_per_epoch for f in recipe.decay_at]
    return StepSchedule(peak, [b for b in boundaries if b > 0], warmup_steps)


def optimizer(learning_rate, weight_decay, decay_norm_parameters=True, momentum=0.9):
    """SGD with momentum and the papers' L2 weight decay (`zoo.optimizers`);
    gamma/beta excluded on request."""
    from zoo import optimizers

    return optimizers.sgd(learning_rate, weight_decay, momentum, decay_norm_parameters)


def steps_per_execution(steps_per_epoch, requested):
    """The divisor of `steps_per_epoch` nearest `requested` (the smaller on a
    tie). Keras runs whole executions: with 390 steps an epoch and 20 steps
    an execution it trains 400 steps an epoch, which shifts the schedule's
    drops and miscounts epochs, so the count must divide the epoch."""
    divisors = [d for d in range(1, steps_per_epoch + 1) if steps_per_epoch % d == 0]
    return min(divisors, key=lambda d: (abs(d - requested), d))


def median_of_last(values, n=5):
    """The paper's reported number: the median over the last `n` epochs."""
    return float(np.median(values[-n:])) if values else None
