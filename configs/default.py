"""Defaults shared by every recipe: RMSE + (BCE & Dice) on DSResNet, sized for a CPU.

Each recipe file imports `get_config()` from here and overrides what differs. Override any
field on the command line: `python launch.py --config configs/X.py --config.batch_size=32`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "train"  # train | evaluate | predict | lr_range_test | export | plot | benchmark
    config.model = "dsresnet"  # dsresnet | masknet
    config.dtype = "float32"  # compute dtype; parameters stay float32
    config.seed = 0
    # train: start from the parameters and batch statistics of another run's checkpoint
    # (optimizer, schedule and step fresh), PATH or PATH:STEP (PATH its workdir or checkpoints
    # folder; STEP default: its best, else latest), or of a bundle (e.g. jaxsegdepth/weights).
    config.init_from = ""
    # evaluate/predict/export: the model they read, as the jaxsegdepth command's --model: RUN or
    # RUN:STEP (another run's checkpoint), :STEP (WORKDIR's at that step), a bundle folder (the
    # shipped model: jaxsegdepth/weights); "": WORKDIR's best.
    config.model_path = ""
    # The input statistics a model runs with. "auto": a new run takes config.dataset's; a resumed
    # or warm-started run and evaluate/predict/export keep those of the model they read (its
    # checkpoint's model card). "dataset": always config.dataset's.
    config.input_normalization = "auto"
    # Several hosts: jax.distributed.initialize() before anything else (README, "GPUs and several
    # hosts"); also turned on by JAXSEGDEPTH_DISTRIBUTED=1. Empty/0/-1: auto-detected (Cloud TPU,
    # SLURM, Open MPI, Kubernetes) or JAX_COORDINATOR_ADDRESS.
    config.distributed = ml_collections.ConfigDict(
        dict(
            enabled=False,
            coordinator_address="",
            num_processes=0,
            process_id=-1,
            heartbeat_timeout_s=100,  # a process silent this long is taken for dead
            shutdown_timeout_s=60,  # how long one that ends waits for the others to fail them
        )
    )
    config.compilation_cache_dir = ""  # "": ~/.cache/jaxsegdepth/jax; "none": off

    config.dataset = ml_collections.ConfigDict(
        dict(
            name="synthetic_museum",  # synthetic_museum | modest_museum | folder (docs/data.md)
            data_dir="",  # prepared tfds data; "" = ~/tensorflow_datasets
            # modest_museum: the MODEST folder or its .zip (never downloaded); folder: the folder
            # with bg/, bg_fg/, mask/ and optionally depth/
            manual_dir="",
            num_samples=2000,  # synthetic_museum: size of the generated set (1,400 train / 600 val)
            seed=0,  # synthetic_museum: generation seed
            skip_corrupt=False,  # modest_museum: leave out samples with corrupt JPEGs (else: error)
            val_fraction=0.3,  # reference split: seed-1 shuffle, first 70% train
            # Loader: grain worker processes (0 = read in this process) and the threads each uses;
            # "auto" chooses from the CPU count (printed at start; docs/data.md).
            worker_count="auto",
            read_threads="auto",
            prefetch_batches=2,  # batches prepared ahead per reading process (>= its threads)
        ),
        # Not type-safe, so worker_count/read_threads take "auto" or an int, from Python too
        # (a command-line override arrives as a string); `pipeline.validate` checks them all.
        type_safe=False,
    )

    # Augmentation of the train split's inputs, on the device (jaxsegdepth/preprocess.py and
    # capture.py); validation and inference never see it.
    config.augment = ml_collections.ConfigDict(
        dict(
            # Photometric augmentation of the inputs on the train split, one draw for both: the
            # reference's recipes (`:published`) turn it on; the synthetic scenes have no
            # photometric shift between the splits, and it slowed learning on them
            # (docs/results.md).
            photometric=False,
            hsv_prob=0.25,  # probability of hue/saturation/value jitter
            contrast_prob=0.25,  # probability of random contrast
            # Capture nuisances on the train split, each shot (plate, scene) on its own
            # (jaxsegdepth/capture.py): a real plate and scene are two exposures, with their own
            # exposure, white balance, gamma and sensor noise, the camera perhaps nudged between
            # them. "auto" (the default): on for the generated set, off for datasets of real
            # captures, whose shots already differ; True or False for any dataset (not
            # type-safe: a string or a bool). `prob` leaves the rest of the samples as the
            # generator drew them. By default the plate does not move (shift_px, rotate_deg and
            # scale 0): plate registration (config.align) undoes a nudged camera; with the nudge
            # the model lost 0.03-0.05 IoU on exact plates, without it 0.01, and without the
            # photometric part it fails when auto-exposure brightens the scene by a fifth
            # (docs/captures.md, "Auto-exposure").
            capture=ml_collections.ConfigDict(
                dict(
                    enabled="auto",
                    prob=0.7,  # probability that a sample gets nuisances at all
                    exposure=0.25,  # stops, each shot in [-e, e]
                    white_balance=0.05,  # per-channel gain in [1 - w, 1 + w]
                    gamma=0.1,  # gamma in [1 / (1 + g), 1 + g]
                    noise=0.02,  # sensor noise std at white, each shot in [0, noise]
                    shift_px=0.0,  # plate translation per axis, pixels at 224 px (e.g. 2)
                    rotate_deg=0.0,  # plate rotation, degrees (e.g. 0.3)
                    scale=0.0,  # plate scale in [1 - s, 1 + s] (e.g. 0.005)
                ),
                type_safe=False,
            ),
        )
    )

    config.batch_size = 8  # global, split across every device
    # Progressive resizing, one stage a (resolution, epochs) or (resolution, epochs, crop):
    # train `epochs` epochs at `resolution`, on random `crop`-pixel windows when given
    # (validation always sees whole images). The CPU-sized default (docs/results.md): the
    # last stage trains on 128 px windows of the stored 224 px images, where the masks are
    # sharp. `:published` gives the reference's schedule.
    config.stages = ((96, 5), (128, 1), (224, 2, 128))
    config.steps_per_epoch = 0  # 0: one pass over the training split
    config.log_every_steps = 10
    # train/grad_norm, train/param_norm, train/update_norm (global L2) among the step metrics;
    # a non-finite gradient norm then stops the run like a non-finite loss
    config.log_norms = False
    # A jax.profiler trace of the 1-based train steps (first, last) in WORKDIR/profile/
    # (process 0; docs/performance.md); (0, 0): none
    config.profile_steps = (0, 0)

    # The reference trains with SGD (momentum 0.9, lr 0.01, reduce-on-plateau), which the
    # `:published` configs keep. On the CPU budget Adam with a one-cycle schedule gets much
    # further in the same number of steps (docs/results.md).
    config.optimizer = ml_collections.ConfigDict(
        dict(
            name="adam",
            learning_rate=0.002,
            momentum=0.9,
            nesterov=False,
            weight_decay=0.0,
            grad_clip_norm=0.0,
        )
    )
    # One optimizer step every `accumulate_steps` batches of batch_size (optax.MultiSteps, the
    # mean gradient; the schedule counts optimizer steps; BatchNorm sees each batch alone:
    # docs/performance.md); 1: every batch
    config.accumulate_steps = 1
    # Fine-tuning (docs/transfer.md): regexes over parameter paths ("enc1/convs/conv1/kernel"),
    # each matching whole paths, e.g. ("enc.*",). `freeze`: those parameters never move;
    # `lr_multipliers`: ((regex, factor), ...), the first match's factor scales the update.
    config.freeze = ()
    config.lr_multipliers = ()
    # An exponential moving average of the weights (and BatchNorm statistics), updated every
    # train step with this decay (0: none; docs/performance.md). When on, validation, the best
    # checkpoint, evaluate, predict and export use the average.
    config.ema_decay = 0.0
    config.schedule = ml_collections.ConfigDict(
        dict(
            name="onecycle",  # constant | step | plateau | onecycle
            # plateau (and `factor` for step)
            patience=2,
            factor=0.1,
            min_lr=1e-6,
            rtol=1e-4,
            boundaries=(3,),  # step: epochs after which the rate is multiplied by `factor`
            # onecycle
            pct_start=0.3,
            div_factor=25.0,
            final_div_factor=1e4,
        )
    )

    # Loss as data: head -> {term: weight}; see jaxsegdepth.losses.compose.
    # RMSE + (BCE & Dice): 2 rmse(depth) + bce(mask) + 2 dice(mask, smooth 1e-6), as the reference.
    config.loss = ml_collections.ConfigDict({"depth": {"rmse": 2.0}, "mask": {"bce_dice": 1.0}})
    # How the heads' losses are weighted in training (jaxsegdepth/weighting.py): method "fixed"
    # as above, "uncertainty" (learned log-variances, Kendall et al. 2018) or "dwa" (dynamic
    # weight average, Liu et al. 2019, with the softmax `temperature`).
    config.loss_weighting = ml_collections.ConfigDict(dict(method="fixed", temperature=2.0))

    config.checkpoint = ml_collections.ConfigDict(
        dict(
            monitor="val_loss",  # the metric that picks the best checkpoint, and its mode
            mode="min",
            every_steps=0,  # 0: only at the end of every epoch
        )
    )

    # Evaluators (jaxsegdepth/evaluators/): name -> type, `every` training epochs between
    # runs (0: never in training), `evaluate` whether mode=evaluate runs it, and the type's own
    # fields. Results are named after the entry: val_loss, photos_model_iou, ...
    config.evals = ml_collections.ConfigDict(
        dict(
            val=dict(type="validation", every=1, evaluate=True),  # its val_loss picks the best
            # With ema_decay > 0, the same pass on the trained weights behind the average
            # (training only), e.g. to see what the average gains
            val_trained=dict(type="validation", every=0, evaluate=False, weights="trained"),
            # `samples` validation samples drawn in predictions/epoch_NNN.png
            preview=dict(type="preview", every=1, evaluate=False, samples=6),
            baselines=dict(type="baselines", every=0, evaluate=True),
            # Held-out pairs of real photographs (masks only; data/photos.py): the generator's
            # silhouettes; other shapes; other shapes with capture nuisances (shadows,
            # exposure, noise, a nudged plate, JPEG quality)
            photos=dict(type="photos", every=0, evaluate=True, pairs=48, set="photos"),
            photos_clean=dict(type="photos", every=0, evaluate=True, pairs=48, set="photos_clean"),
            photos_capture=dict(
                type="photos", every=0, evaluate=True, pairs=48, set="photos_capture"
            ),
            # Auto-exposure stepping a quarter to half a stop between the shots: mode=evaluate
            photos_exposure_step=dict(
                type="photos", every=0, evaluate=True, pairs=48, set="photos_exposure_step"
            ),
            # The plate re-shot from a moved camera (0, 1, 2, 4 px; 8 px and 0.5-1 degree),
            # scored with and without registration (`unaligned`): mode=evaluate only
            **{
                f"photos_moved_{move}": dict(
                    type="photos",
                    every=0,
                    evaluate=True,
                    pairs=48,
                    set=f"photos_moved_{move}",
                    unaligned=True,
                )
                for move in ("0px", "1px", "2px", "4px", "8px_1deg")
            },
        )
    )

    # LR range test (mode=lr_range_test): sweep start_lr -> end_lr over num_steps ("exp" or
    # "linear" spacing) with config.optimizer; `smoothing` is the weight of the newest loss in the
    # bias-corrected moving average; stop once smoothed > diverge_factor x best. Suggestion: the
    # lr at the lowest smoothed loss. resolution/batch_size 0: the first stage's / config.batch_size.
    config.lr_range = ml_collections.ConfigDict(
        dict(
            start_lr=1e-7,
            end_lr=5.0,
            num_steps=400,
            spacing="exp",
            smoothing=0.05,
            diverge_factor=4.0,
            resolution=96,
            batch_size=0,
        )
    )

    # Plate registration (jaxsegdepth/align.py, docs/captures.md): the camera's motion between
    # the plate and the scene, estimated (phase correlation, then ECC on the background) and
    # undone before the network, in predict (pairs and clips), evaluate and the photo
    # evaluators. A motion beyond the bounds, a poor background fit (the wrong plate) or a plate
    # much darker or brighter than the scene: one warning, the plate used unaligned.
    config.align = ml_collections.ConfigDict(
        dict(
            enabled=True,
            motion="euclidean",  # translation | euclidean | affine | homography
            work_side=256,  # the estimate's longer side, pixels
            iterations=40,  # ECC iterations per pass
            max_shift=0.08,  # largest translation, a fraction of the longer side
            max_rotation_deg=3.0,
            max_scale=0.05,  # |scale - 1| at most (affine, homography)
            min_correlation=0.6,  # ECC's correlation on the background at least
            max_brightness_ratio=2.5,  # plate and scene mean grey within this ratio
            min_motion_px=0.1,  # a smaller motion leaves the plate untouched
        )
    )

    # mode=evaluate: input sides to evaluate at; (): the last stage's
    config.evaluate = ml_collections.ConfigDict(dict(resolutions=()))

    config.predict = ml_collections.ConfigDict(
        dict(
            # two image files, or two folders matched by file name (without the extension)
            bg="",
            bg_fg="",
            output_dir="",  # "": WORKDIR/predictions_user; a clip: WORKDIR/predictions_video/NAME
            threshold=0.5,  # mask probability -> the thresholded mask PNG
            resolution=0,  # model input side (multiple of 32); 0: each image's size rounded to 32
            max_side=1024,  # with resolution 0: the longer side scaled down to this (0: no cap)
            colormap="viridis",  # matplotlib colour map of the depth PNG
            # A clip from a fixed camera instead of bg_fg (leave it empty): a video OpenCV reads
            # or a folder of numbered frames, predicted frame by frame against a plate
            # (docs/modes.md, "Predict on a video")
            video="",
            outputs=("mask_prob", "mask", "depth", "side_by_side"),  # and/or "composite"
            # The new background (a colour R,G,B or an image file) of each still's
            # NAME_composite.png ("": none) and of a clip's composite ("": green)
            replace_bg="",
        )
    )
    # What only a clip (`predict.video`) uses
    config.video = ml_collections.ConfigDict(
        dict(
            plate_frames=0,  # > 0: the plate is the per-pixel median of the first N frames; 0: bg
            video_format="mp4",  # mp4 (OpenCV's mp4v) | png (a folder of numbered PNGs each)
            batch_size=8,  # frames per model call
            # alpha of an average over frames (0: off); measured 0.3-0.8 on moving figures: more
            # flicker (their fading trail), IoU +0.001 to -0.39 (docs/modes.md)
            temporal_smoothing=0.0,
            fps=25.0,  # a frame folder's frame rate (a video file keeps its own)
        )
    )

    config.export = ml_collections.ConfigDict(
        dict(
            resolution=224,  # input side of the exported function (fixed)
            batch_size=0,  # 0: any batch (symbolic dimension), else this fixed batch
            platforms=("cpu", "cuda"),  # lowered for each; (): the default backend only
            output_dir="",  # "": WORKDIR/export
        )
    )
    return config


def use_published(
    config: ml_collections.ConfigDict,
    *,
    stages,
    learning_rate,
    augment: bool = True,
    batch_size: int = 128,
) -> ml_collections.ConfigDict:
    """Switches `config` to a reference schedule on the real MODEST Museum data.

    Selected with `--config configs/<recipe>.py:published`; the data needs
    `--config.dataset.manual_dir=DIR` (see the README).
    """
    config.dataset.name = "modest_museum"
    config.augment.photometric = augment
    config.augment.capture.enabled = False  # the reference trains without capture nuisances
    config.stages = tuple(stages)  # the reference trains on whole images
    config.optimizer.name, config.optimizer.learning_rate = "sgd", learning_rate
    config.optimizer.momentum = 0.9
    config.schedule.name = "plateau"
    config.batch_size = batch_size
    config.log_every_steps = 100
    config.checkpoint.every_steps = 1000
    return config


def check_arg(arg) -> bool:
    """True for `:published`, False for no argument; anything else is a usage error."""
    if arg in (None, ""):
        return False
    if arg == "published":
        return True
    raise ValueError(f"unknown config argument {arg!r}: expected none or 'published'")


def masknet_trial(term: str, arg=None) -> ml_collections.ConfigDict:
    """A mask-only trial: MaskNet trained on one loss `term` alone.

    `:published`: the reference's loss comparison on MODEST Museum (96px, 2 epochs, SGD lr 0.01).
    """
    config = get_config()
    config.model = "masknet"
    config.loss = ml_collections.ConfigDict({"mask": {term: 1.0}})
    if check_arg(arg):
        use_published(config, stages=((96, 2),), learning_rate=0.01)
    return config
