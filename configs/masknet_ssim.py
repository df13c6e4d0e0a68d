"""Mask-only trial on MaskNet (59,745 parameters): SSIM loss (1 - SSIM) on sigmoid(mask).

`:published`: MODEST Museum as in the reference's loss comparison: batch 128 at 96px,
2 epochs, SGD lr 0.01, augmentation on.
"""

from configs import default


def get_config(arg=None):
    return default.masknet_trial("ssim", arg)
