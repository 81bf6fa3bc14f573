"""Twin consistency: each training image beside an overexposed twin, and a loss that asks both for one answer.

More light saturates a smear's bright band (pale cytoplasm, red cells, the glass): the quick CNN,
trained on such images only now and then, lost 3-5 points at 15% more light while the pixels left
still showed the cells (benchmarks/results/cnn_robustness.md). Pairing every image with a twin whose
band is gone, and penalising the Jensen-Shannon divergence between their predictions (as AugMix,
Hendrycks et al. 2020, does for its augmentation chains), asks the model for features the band's
loss does not move.

Each batch is the lab images first, then their twins in the same order (input.dataset(twins=True)),
so the loss finds every pair at i and i + batch/2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

# The twin's light: always enough to saturate a band (x1.1), up to the augmentation's strongest (augment.OVEREXPOSURE).
TWIN_GAINS: tuple[float, float] = (1.1, 1.3)


def twin_batch(images: "tf.Tensor", labels: "tf.Tensor", overexpose: bool) -> tuple["tf.Tensor", "tf.Tensor"]:
    """[n, H, W, 3] images and [n] labels -> [2n, ...]: the images, then their twins (overexposed, or themselves)."""
    import tensorflow as tf

    from components.train import augment

    if overexpose:
        gains = tf.random.uniform([tf.shape(images)[0], 1, 1, 1], *TWIN_GAINS)
        twins = augment.overexpose(images, gains)
    else:  # validation: identical twins, so the divergence is 0 and the loss is the cross-entropy alone
        twins = images
    return tf.concat([images, twins], axis=0), tf.concat([labels, labels], axis=0)


def twin_consistency_loss(weight: float, label_smoothing: float = 0.0):
    """Per-sample cross-entropy plus `weight` x the Jensen-Shannon divergence of the sample's pair."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="leukoflow")
    class TwinConsistency(keras.losses.Loss):
        def __init__(self, weight: float, label_smoothing: float = 0.0, **kwargs):
            super().__init__(**kwargs)
            self.weight, self.label_smoothing = weight, label_smoothing

        def call(self, y_true, y_pred):
            cross_entropy = keras.losses.categorical_crossentropy(y_true, y_pred, label_smoothing=self.label_smoothing)
            half = ops.shape(y_pred)[0] // 2
            p = ops.clip(y_pred[:half], 1e-7, 1.0)
            q = ops.clip(y_pred[half:], 1e-7, 1.0)
            mean = (p + q) / 2.0
            divergence = 0.5 * (ops.sum(p * ops.log(p / mean), axis=-1) + ops.sum(q * ops.log(q / mean), axis=-1))
            return cross_entropy + self.weight * ops.concatenate([divergence, divergence], axis=0)

        def get_config(self):
            return {**super().get_config(), "weight": self.weight, "label_smoothing": self.label_smoothing}

    return TwinConsistency(weight, label_smoothing)
