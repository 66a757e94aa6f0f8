"""train: the paper's training recipe on tf.distribute (`python -m train`).

Modules: `app` (the absl app and its flags), `recipe` (learning-rate
schedule, weight decay, recipe defaults), `data` (TFDS / image-folder / fake
input pipelines with keras-cv augmentation), `strategies` (default,
mirrored with logical CPU devices, multi-worker, TPU), `callbacks` (an
idempotent per-epoch log).
"""
