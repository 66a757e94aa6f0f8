"""Convert keras.applications.ResNet50 from BatchNormalization to GN.

    python examples/convert_resnet50.py

Builds ResNet50 (random weights; pass weights="imagenet" where the download
works), rewrites its 53 BatchNormalization layers into GroupNormalization with
32 groups, prints the report, checks the converted model on a random image
and takes one training step on random data.
"""

import numpy as np
import keras

import keras_gn


def main():
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    gn_model, report = keras_gn.convert_bn_to_gn(
        model, groups=32, init="zero_init_last", return_report=True
    )
    print(report)

    images = np.random.uniform(0, 255, size=(2, 224, 224, 3)).astype("float32")
    labels = np.array([3, 7])
    print("output shape:", tuple(gn_model(images).shape))
    gn_model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    loss = gn_model.train_on_batch(keras.applications.resnet50.preprocess_input(images), labels)
    print(f"one training step, loss {float(loss):.3f}")


if __name__ == "__main__":
    main()
