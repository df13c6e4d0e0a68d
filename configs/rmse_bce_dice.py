"""Recipe 1, RMSE + (BCE & Dice) on DSResNet: 2 rmse(depth) + bce(mask) + 2 dice(mask).

Default: the CPU-sized schedule of `default.py` on the synthetic set.
`:published`: the reference's schedule on MODEST Museum - SGD lr 0.01, reduce-on-plateau,
augmentation on, 96px for epochs 1-3, 160px for 4-8, 224px for 9-11.
"""

from configs import default


def get_config(arg=None):
    config = default.get_config()
    # Every epoch's record says how the model does on real photographs with capture
    # nuisances, beside the best background-subtraction threshold (photos_capture_*).
    config.evals.photos_capture.every = 1
    if default.check_arg(arg):
        default.use_published(config, stages=((96, 3), (160, 5), (224, 3)), learning_rate=0.01)
    return config
