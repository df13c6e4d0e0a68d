"""Recipe 3, the LR range test: an exponential sweep of the learning rate, loss against lr.

Default: the same sweep (SGD momentum 0.9) on the synthetic set at the default batch.
`:published`: the reference's sweep on MODEST Museum - batch 256 at 96px, 1e-7 -> 5 over 400
iterations, SGD momentum 0.9.
Writes `WORKDIR/lr_range.json` and `WORKDIR/lr_range.png` (see jaxsegdepth/lr_range.py).
"""

from configs import default


def get_config(arg=None):
    config = default.get_config()
    config.mode = "lr_range_test"
    config.optimizer.name, config.optimizer.momentum = "sgd", 0.9  # the reference's optimizer
    config.lr_range.start_lr = 1e-7
    config.lr_range.end_lr = 5.0
    config.lr_range.spacing = "exp"
    config.lr_range.num_steps = 400
    if default.check_arg(arg):
        default.use_published(config, stages=((96, 1),), learning_rate=0.01)
        config.lr_range.batch_size = 256
        config.lr_range.resolution = 96
    return config
