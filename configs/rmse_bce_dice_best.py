"""Recipe 4, the best published result (IoU 0.92, RMSE 0.014): RMSE + (BCE & Dice), a high
learning rate divided by 10 after the first stage, no augmentation.

Default (synthetic, CPU): the default's Adam at a constant 2e-3, divided by 10 after the first
stage. `:published`: MODEST Museum, SGD momentum 0.9 at lr 0.1, divided by 10 after epoch 3,
96px for epochs 1-3, 160px for 4-6.
"""

from configs import default


def get_config(arg=None):
    config = default.get_config()
    config.augment.photometric = False
    if default.check_arg(arg):
        default.use_published(config, stages=((96, 3), (160, 3)), learning_rate=0.1, augment=False)
    config.schedule.name = "step"
    config.schedule.factor = 0.1
    config.schedule.boundaries = (config.stages[0][1],)  # after the first stage
    return config
