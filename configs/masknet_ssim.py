"""Mask-only trial on MaskNet (59,745 parameters): 1 - ssim(sigmoid(mask), mask).

`:published`: MODEST Museum as in the reference's loss comparison: batch 128 at 96px,
2 epochs, SGD lr 0.01, augmentation on.
"""
import ml_collections

from configs import default


def get_config(arg=None):
    config = default.get_config()
    config.model = "masknet"
    config.loss = ml_collections.ConfigDict({"mask": {"ssim": 1.0}})
    if default.check_arg(arg):
        default.use_published(config, resolutions=(96,), stage_epochs=(2,), learning_rate=0.01)
    return config
