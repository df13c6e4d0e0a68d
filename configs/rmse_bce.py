"""RMSE + BCE on DSResNet: 2 rmse(depth) + bce(mask) (a loss-comparison run).

`:published`: MODEST Museum as in the reference's loss comparison: batch 128 at 96px,
2 epochs, SGD lr 0.01, augmentation on.
"""

import ml_collections

from configs import default


def get_config(arg=None):
    config = default.get_config()
    config.loss = ml_collections.ConfigDict({"depth": {"rmse": 2.0}, "mask": {"bce": 1.0}})
    if default.check_arg(arg):
        default.use_published(config, stages=((96, 2),), learning_rate=0.01)
    return config
