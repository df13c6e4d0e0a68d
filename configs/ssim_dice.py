"""Recipe 2, SSIM + Dice on DSResNet: 2 (1 - ssim(depth)) + dice(mask).

`:published`: MODEST Museum, SGD lr 0.01, reduce-on-plateau, augmentation on,
96px for epochs 1-3, 160px for 4-8.
"""

import ml_collections

from configs import default


def get_config(arg=None):
    config = default.get_config()
    config.loss = ml_collections.ConfigDict({"depth": {"ssim": 2.0}, "mask": {"dice": 1.0}})
    if default.check_arg(arg):
        default.use_published(config, stages=((96, 3), (160, 5)), learning_rate=0.01)
    return config
