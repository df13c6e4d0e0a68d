"""Defaults shared by every recipe: RMSE + (BCE & Dice) on DSResNet, sized for a CPU.

Each recipe file imports `get_config()` from here and overrides what differs. Override any
field on the command line: `python launch.py --config configs/X.py --config.batch_size=32`.
"""
import ml_collections

from jaxsegdepth.data import pipeline


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "train"  # train | evaluate | predict | lr_range_test | export
    config.model = "dsresnet"  # dsresnet | masknet
    config.dtype = "float32"  # compute dtype; parameters stay float32
    config.seed = 0

    config.dataset = pipeline.default_config()

    # Progressive resizing: stage i trains `stage_epochs[i]` epochs at `resolutions[i]`.
    config.batch_size = 16  # global, split across every device
    config.resolutions = (64, 96)
    config.stage_epochs = (6, 2)
    config.steps_per_epoch = 0  # 0: one pass over the training split
    config.log_every_steps = 20

    config.optimizer = ml_collections.ConfigDict(dict(
        name="sgd", learning_rate=0.01, momentum=0.9, nesterov=False, weight_decay=0.0,
        grad_clip_norm=0.0))
    config.schedule = ml_collections.ConfigDict(dict(
        name="plateau",  # constant | step | plateau | onecycle
        patience=2, factor=0.1, min_lr=1e-6, rtol=1e-4,  # plateau (and `factor` for step)
        boundaries=(3,),  # step: epochs after which the rate is multiplied by `factor`
        pct_start=0.3, div_factor=25.0, final_div_factor=1e4))  # onecycle

    # Loss as data: head -> {term: weight}; see jaxsegdepth.losses.compose.
    config.loss = ml_collections.ConfigDict({"depth": {"rmse": 2.0}, "mask": {"bce": 1.0, "dice": 2.0}})

    config.checkpoint = ml_collections.ConfigDict(dict(
        monitor="val_loss", mode="min",  # the metric that picks the best checkpoint
        every_steps=0,  # 0: only at the end of every epoch
        step=-1))  # evaluate/predict/export: -1 best, else this step

    config.num_preview = 6  # validation samples drawn in every epoch's prediction grid

    config.lr_range = ml_collections.ConfigDict(dict(
        start_lr=1e-7, end_lr=5.0, num_steps=400, spacing="exp", smoothing=0.05,
        diverge_factor=4.0, resolution=96))

    config.predict = ml_collections.ConfigDict(dict(
        bg="", bg_fg="",  # two image files, or two folders matched by file name
        output_dir="", threshold=0.5))

    config.export = ml_collections.ConfigDict(dict(resolution=224, batch_size=0))  # 0: any batch
    return config
