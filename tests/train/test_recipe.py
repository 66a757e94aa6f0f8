"""Tests of the training recipes: linear scaling, the step schedule scaled to
the number of epochs, the cosine schedule, warm-up, weight decay with and
without gamma/beta."""

import dataclasses

import numpy as np
import pytest
import keras

from train import recipe


def rates(schedule, steps):
    return [float(keras.ops.convert_to_numpy(schedule(s))) for s in steps]


def test_linear_scaling_is_the_papers_rule():
    # 0.1 * N / 32 with N images per GPU on 8 GPUs (global batch 8N).
    for n in (32, 16, 8, 4, 2):
        assert recipe.learning_rate(recipe.IMAGENET, 8 * n) == pytest.approx(0.1 * n / 32)
    assert recipe.learning_rate(recipe.CIFAR, 128) == pytest.approx(0.1)
    assert recipe.learning_rate(recipe.CIFAR, 64, base_learning_rate=0.2) == pytest.approx(0.1)


def test_step_schedule_divides_by_10_at_30_60_90_percent():
    s = recipe.schedule(recipe.IMAGENET, epochs=100, steps_per_epoch=10, peak=0.1)
    assert s.boundaries == [300, 600, 900]
    np.testing.assert_allclose(rates(s, [0, 299, 300, 599, 600, 899, 900, 999]),
                               [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-5)
    short = recipe.schedule(recipe.IMAGENET, epochs=10, steps_per_epoch=5, peak=0.1)
    assert short.boundaries == [15, 30, 45]  # epochs 3, 6, 9: scaled to --epochs
    assert recipe.schedule(recipe.CIFAR, epochs=160, steps_per_epoch=1, peak=0.1).boundaries == [80, 120]


def test_warmup_ramps_linearly_to_the_peak():
    s = recipe.schedule(recipe.IMAGENET, epochs=100, steps_per_epoch=10, peak=0.4, warmup_epochs=5)
    np.testing.assert_allclose(rates(s, [0, 24, 49, 50, 299]), [0.4 / 50, 0.2, 0.4, 0.4, 0.4], rtol=1e-5)


def test_cosine_schedule_decays_to_zero_at_the_last_step():
    cosine = dataclasses.replace(recipe.CIFAR, schedule="cosine")
    s = recipe.schedule(cosine, epochs=10, steps_per_epoch=10, peak=0.2)
    steps = np.array([0, 25, 50, 75, 100])
    np.testing.assert_allclose(rates(s, steps), 0.1 * (1 + np.cos(np.pi * steps / 100)), atol=1e-7)
    warm = recipe.schedule(cosine, epochs=10, steps_per_epoch=10, peak=0.2, warmup_epochs=2)
    np.testing.assert_allclose(rates(warm, [0, 10, 20, 60, 100]), [0.0, 0.1, 0.2, 0.1, 0.0], atol=1e-7)


@pytest.mark.parametrize("changes, message", [
    (dict(schedule="linear"), r"schedule='linear'; valid: 'step', 'cosine'\."),
    (dict(cutout=33), r"cutout=33; valid: 0 \(none\) to the image size, 32\."),
    (dict(cutout=-1), r"cutout=-1; valid"),
])
def test_bad_recipes_say_what_is_valid(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(recipe.CIFAR, **changes)


@pytest.mark.parametrize("decay_norm", [True, False])
def test_weight_decay_on_gamma_and_beta_is_a_choice(decay_norm):
    import keras_gn

    model = keras.Sequential([keras.Input((4, 4, 8)), keras.layers.Conv2D(8, 1),
                              keras_gn.GroupNormalization(groups=2, beta_initializer="ones")])
    sgd = recipe.optimizer(1.0, weight_decay=0.1, decay_norm_parameters=decay_norm, momentum=0.0)
    sgd.build(model.trainable_variables)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    sgd.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in model.trainable_variables])
    gamma = model.layers[-1].gamma
    assert np.allclose(gamma.numpy(), 0.9 if decay_norm else 1.0)
    kernel = model.layers[0].kernel
    np.testing.assert_allclose(kernel.numpy(), 0.9 * before[kernel.path], rtol=1e-6)


@pytest.mark.parametrize("steps,requested,chosen", [
    (390, 20, 15), (390, 1, 1), (195, 20, 15), (3125, 20, 25), (781, 20, 11), (1562, 20, 22), (400, 20, 20),
    (7, 20, 7), (6, 4, 3)])
def test_steps_per_execution_divides_the_epoch(steps, requested, chosen):
    assert recipe.steps_per_execution(steps, requested) == chosen
    assert steps % chosen == 0


def test_median_of_last_five():
    assert recipe.median_of_last([50, 40, 30, 25, 24, 26, 24.5]) == 25
    assert recipe.median_of_last([]) is None
