"""Training: model builders, the tf.data input, the training executor and the serving export."""

from components import home as _home

# Before anything imports Keras: its weight cache is the state home's, so every entry point
# (make run, a KFP task, a drift-triggered retraining) finds the offline ImageNet files.
_home.use_keras_home()
