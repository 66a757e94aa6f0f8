"""train: the paper's training recipe on tf.distribute.

Empty for now: the absl-py training app (`python -m train`) comes with the
training work.
"""
