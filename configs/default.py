"""Every configuration field, with its default. Dataset configs override what differs.

Any field can be set on the command line, e.g.
    python main.py --config=configs/mnist.py --workdir=runs/mnist --config.training.batch_size=256
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Returns the default configuration."""
    config = ml_collections.ConfigDict()
    # Seed for parameter init, batch draws, noise and sampling.
    config.seed = 0
    # What --mode=train trains: "diffusion" (the score model; latent diffusion's
    # autoencoder first) or "classifier" (the feature classifier of --mode=eval).
    config.task = "diffusion"

    config.data = data = ml_collections.ConfigDict()
    # What to learn (docs/your_own_data.md): mnist, fashion_mnist, cifar10 (prepared by
    # jaxdiff), another TFDS image dataset prepared in data_dir (celeb_a, svhn_cropped, ...),
    # or "folder": the images under data.path, its first-level subfolders the classes.
    data.dataset = "mnist"
    # folder only: the folder of images (PNG, JPEG; any size, grayscale or RGB).
    data.path = ""
    # Side the images are center-cropped and resized to; 0: their own (when square and
    # all alike). Anything but mnist, fashion_mnist, cifar10 at their own size is fitted
    # once into a cache (data.cache_dir).
    data.image_size = 0
    # 1 (grayscale) or 3 (RGB); 0: the dataset's own (a folder: 1 if every image is gray).
    data.channels = 0
    # Filled in by the run from the dataset (saved in config.json so sampling needs no
    # data): the class names in label order. Leave empty.
    data.class_names = ()
    # Where fitted datasets are cached; "": $XDG_CACHE_HOME/jaxdiff/datasets, else
    # ~/.cache/jaxdiff/datasets (a directory shared by a cluster's jobs saves decoding).
    data.cache_dir = ""
    # Keep the training split on the device(s) and draw batches there ("always"), or
    # stream batches from the host ("never"); "auto": on the device when the split
    # takes at most a quarter of each device's memory (docs/your_own_data.md).
    data.on_device = "auto"
    # TFDS data directory; empty means $TFDS_DATA_DIR, else TFDS's default (~/tensorflow_datasets).
    data.data_dir = ""
    # Training split, in TFDS split syntax (e.g. "train[:1024]" for a quick run).
    data.train_split = "train"
    # Prepare a dataset missing from the data directory: download it (or take the
    # original files from <data_dir>/downloads/manual/) and write it in TFDS's format.
    data.download = True
    # Pixel range the model sees: [-1, 1] if True, else [0, 1] (the original project's).
    data.centered = False
    # Random horizontal flips, drawn inside the jitted step.
    data.random_flip = False

    config.model = model = ml_collections.ConfigDict()
    # Score network: small_unet (the original project's small net, transposed convs),
    # small_unet_resize (same, resize+conv upsampling) or unet (residual + attention).
    # small_unet trains faster than small_unet_resize (docs/performance.md): its
    # stride-2 transposed convs do a quarter of the work of a 3x3 conv after upsampling.
    # Former names, still accepted: seed_unet, seed_unet_resize.
    model.name = "small_unet"
    # Channels per resolution level (small nets take exactly 4 levels).
    model.channels = (32, 64, 128, 256)
    # How the network becomes a score: "none" (the original's: output / std(t)) or
    # "edm" (input/output scaling and a skip path that keep every noise level O(1)).
    model.preconditioning = "edm"
    # edm only: the data's standard deviation assumed by the scalings.
    model.sigma_data = 0.5
    # Width of the Gaussian-Fourier time embedding.
    model.embed_dim = 256
    # Standard deviation of the fixed random Fourier frequencies.
    model.fourier_scale = 30.0
    # unet only: residual blocks per level on the way down.
    model.num_res_blocks = 2
    # Feature-map sides (e.g. 7, 8) that get attention: self-attention blocks in
    # unet, spatial transformers in conditional nets (small nets: sides 26, 12, 5, 2 on 28x28).
    model.attention_resolutions = (7,)
    # Attention heads (unet; conditional small nets).
    model.num_heads = 1
    # unet only: dropout rate inside residual blocks.
    model.dropout = 0.1
    # Condition on the class: cross-attention to learned class tokens, with a
    # null token for classifier-free guidance (training.cond_drop_prob).
    model.conditional = False
    # conditional only: condition tokens per class (cross-attention keys/values).
    model.context_tokens = 4
    # conditional only: width of each condition token.
    model.context_dim = 256
    # conditional only: hidden width of the transformer feed-forward, in channels.
    model.ff_mult = 4
    # Recompute each block's activations in the backward pass instead of keeping them:
    # less memory for about one more forward pass. Same parameters (checkpoints carry over).
    model.remat = False

    config.autoencoder = autoencoder = ml_collections.ConfigDict()
    # Latent diffusion: train this autoencoder first (stage 1), then the score model
    # on its scaled latents (stage 2); samples are decoded. False: pixel space.
    autoencoder.enabled = False
    # Channels per level; the resolution halves (rounding up) between levels, so
    # 3 levels map 28x28 to 7x7 and 32x32 to 8x8.
    autoencoder.channels = (32, 64, 64)
    # Residual blocks per level, in encoder and decoder.
    autoencoder.num_res_blocks = 1
    # Channels of the latent map.
    autoencoder.latent_channels = 4
    # A VAE (posterior sample in training, KL to N(0, I) weighted by kl_weight) or a plain AE.
    autoencoder.variational = True
    # Weight of the KL term (per-example sum over the latent) against the per-pixel loss.
    autoencoder.kl_weight = 1e-6
    # Reconstruction loss, averaged over pixels: "l1" or "mse".
    autoencoder.reconstruction_loss = "l1"
    # The autoencoder's own optimisation (the fields of `optimization` below).
    autoencoder.update(
        optimization(
            num_steps=3000, batch_size=128, learning_rate=1e-3, warmup_steps=200, keep_checkpoints=2
        )
    )
    # Split on which the finished autoencoder's reconstruction MSE and PSNR are measured.
    autoencoder.eval_split = "test"

    config.sde = sde = ml_collections.ConfigDict()
    # Noise process: ve (the original project's dx = sigma^t dw), vp or subvp.
    sde.name = "ve"
    # ve: sigma of dx = sigma^t dw.
    sde.sigma = 25.0
    # vp/subvp: beta(t) = beta_min + t (beta_max - beta_min).
    sde.beta_min = 0.1
    # vp/subvp: see beta_min.
    sde.beta_max = 20.0

    # The score model's optimisation (the fields of `optimization` below), then its own.
    config.training = training = optimization(
        num_steps=20_000, batch_size=128, learning_rate=1e-3, warmup_steps=500, keep_checkpoints=3
    )
    # Micro-batches each batch's gradient is accumulated over (1: none): the same gradient
    # (only dropout masks differ) with about 1/k of the activation memory. batch_size must
    # divide into grad_accum_steps x devices.
    training.grad_accum_steps = 1
    # conditional only: probability that a training label is replaced by the null token.
    training.cond_drop_prob = 0.1
    # Smallest diffusion time in the loss.
    training.eps = 1e-5
    # The loss's diffusion times (jaxdiff/losses.py): "uniform" t ~ U(eps, 1) (the original's),
    # or "log_normal": ln sigma ~ N(p_mean, p_std^2), sigma = std / alpha (EDM's).
    training.noise_distribution = "uniform"
    # log_normal only: EDM's P_mean and P_std.
    training.p_mean = -1.2
    training.p_std = 1.2
    # Each example's weight: "std2" (the original's lambda(t) = std(t)^2), "edm"
    # ((sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on the denoiser; sigma_data is
    # model.sigma_data) or "min_snr" (min(SNR, gamma) / SNR on the noise prediction).
    training.loss_weighting = "std2"
    # min_snr only: its gamma.
    training.min_snr_gamma = 5.0
    # bf16 compute with float32 parameters and optimizer state.
    training.half_precision = False
    # Draw a sample grid with the EMA parameters at each checkpoint.
    training.sample_at_checkpoints = True

    config.sampling = sampling = ml_collections.ConfigDict()
    # The sampler, by name (docs/samplers_and_sdes.md): euler_maruyama (the original's),
    # pc (predictor-corrector), ode (probability-flow Heun on a uniform t grid), or the
    # noise-level samplers edm (Heun, Karras et al. 2022), dpm_solver++ (2M), ddim.
    # edm with churn (below) was chosen by measurement (docs/results.md).
    sampling.sampler = "edm"
    # Steps of the sampler; 0: the sampler's own default (edm 18, dpm_solver++ 20,
    # ddim 35, ode 50, euler_maruyama 500, pc 500). NFE: edm 2n - 1, dpm_solver++ n,
    # ddim n, ode 2n + 1, euler_maruyama n, pc n (1 + corrector_steps); twice the
    # network's batch with guidance.
    sampling.num_steps = 0
    # Samples per grid / per --mode=sample run (without a prompt).
    sampling.num_samples = 64
    # conditional only: classes to sample, one grid row each: names or aliases
    # ("cat,dog,ship"), integers ("3,5") or "all"; "" samples unconditionally.
    sampling.prompt = ""
    # conditional only: samples per prompted class (grid columns).
    sampling.samples_per_class = 10
    # --mode=sample draws at most this many samples per sampler call (with a prompt,
    # batch_size // classes of each class) and rewrites its files after each call;
    # lower it if sampling runs out of memory. One call gives what jaxdiff.load().sample()
    # gives; each further one has noise of its own (docs/quickstart.md#many-samples).
    sampling.batch_size = 500
    # conditional only: classifier-free guidance w in s = (1 + w) s(x, c) - w s(x, null).
    sampling.guidance_scale = 0.0
    # Smallest time the sampler reaches.
    sampling.eps = 1e-3
    # edm, dpm_solver++, ddim: the noise levels from sigma(1) to sigma(eps), then 0:
    # karras (rho-schedule, dense at low noise) or log_snr (uniform in log sigma).
    sampling.noise_schedule = "karras"
    # karras only: its rho (7 in Karras et al. 2022).
    sampling.rho = 7.0
    # edm only: stochastic churn S_churn (0: deterministic), applied at noise levels in
    # [s_tmin, s_tmax], with noise scaled by s_noise (EDM's S_tmin, S_tmax, S_noise;
    # these four are Karras et al.'s ImageNet-64 settings).
    sampling.s_churn = 40.0
    # edm only: see s_churn.
    sampling.s_tmin = 0.05
    # edm only: see s_churn.
    sampling.s_tmax = 50.0
    # edm only: see s_churn.
    sampling.s_noise = 1.003
    # ddim only: 0 is deterministic DDIM, 1 ancestral sampling (DDPM's for vp).
    sampling.eta = 0.0
    # pc only: reverse_diffusion (ancestral) or euler_maruyama.
    sampling.predictor = "reverse_diffusion"
    # pc only: Langevin corrector steps per time step.
    sampling.corrector_steps = 1
    # pc only: signal-to-noise ratio that sets the Langevin step size.
    sampling.snr = 0.16
    # --mode=sample also writes each image as its own PNG, in a folder named like
    # the grid (samples/<stem>/00000.png, ...), e.g. for external FID tools.
    sampling.save_individual = False
    # --mode=sample also writes samples/<stem>_trajectory.png and .gif (noise to sample).
    sampling.save_trajectory = False
    # save_trajectory only: snapshots, evenly spaced over the steps (2 to num_steps + 1).
    sampling.trajectory_frames = 10

    config.classifier = classifier = ml_collections.ConfigDict()
    # The feature classifier (config.task = "classifier"): a residual CNN whose
    # penultimate layer is the feature space of --mode=eval's FID and precision/recall.
    # Channels per stage; the resolution halves between stages.
    classifier.channels = (32, 64, 128)
    # Residual blocks per stage.
    classifier.num_res_blocks = 1
    # GroupNorm groups at most (fewer where the channels do not divide); keep
    # several channels per group (see jaxdiff/models/classifier.py).
    classifier.norm_groups = 32
    # Label smoothing of the cross-entropy loss.
    classifier.label_smoothing = 0.0
    # Random translations: pad by this many pixels (reflecting) and crop back (0: off).
    classifier.random_crop = 0
    # bf16 compute with float32 parameters and optimizer state.
    classifier.half_precision = False
    # The classifier's own optimisation (the fields of `optimization` below).
    classifier.update(
        optimization(
            num_steps=3000,
            batch_size=128,
            learning_rate=2e-3,
            warmup_steps=200,
            weight_decay=5e-4,
            keep_checkpoints=2,
        )
    )
    # Split on which the finished classifier's accuracy is measured.
    classifier.eval_split = "test"

    config.eval = evaluation = ml_collections.ConfigDict()
    # --mode=eval: sample-quality metrics of the latest checkpoint.
    # Workdir of a trained feature classifier of the same dataset
    # (configs/classifier_<dataset>.py); "" means runs/classifier_<dataset>.
    evaluation.classifier_workdir = ""
    # Samples to generate (a conditional model: the same number of each class).
    evaluation.num_samples = 10_000
    # Samples per sampler call; each call's samples are saved, so an interrupted
    # evaluation resumes from the last complete call.
    evaluation.batch_size = 500
    # Real images the samples are compared with (FID, precision/recall); FID
    # against data.train_split and the reference-vs-train floor are reported beside it.
    evaluation.reference_split = "test"
    # Nearest neighbours that set the manifold radii of precision/recall.
    evaluation.nearest_k = 3
    # Test images whose bits/dim the probability-flow ODE computes (0: skip; slow).
    evaluation.bits_per_dim_images = 0
    # Heun steps of that ODE (NFE = 2 x steps, each with a Jacobian-vector product).
    evaluation.bits_per_dim_steps = 100
    # InceptionV3 FID: path to pytorch-fid's weights (.pth with torch, or .npz); "" skips it.
    evaluation.inception_weights = ""

    config.editing = editing = ml_collections.ConfigDict()
    # --mode=inpaint|edit|interpolate (docs/editing.md); the sampler, its steps and
    # the guidance scale come from sampling.*.
    # The images: a split of the run's dataset ("test[:16]") or PNG/JPEG files,
    # directories or glob patterns, comma-separated.
    editing.source = "test[:16]"
    # inpaint: what to fill: lower_half, upper_half, left_half, right_half, center,
    # random_pixels:<fraction removed>, or a PNG of the image size (white keeps).
    editing.mask = "lower_half"
    # A conditional model's class for every image ("3"), or one per image ("3,8,..."):
    # inpaint and edit toward it; interpolate=classes: the two classes. "": none.
    editing.prompt = ""
    # inpaint: RePaint's resampling: each block of jump_length steps runs
    # resample_steps times (1: none; NFE grows about resample_steps-fold).
    editing.resample_steps = 1
    editing.jump_length = 1
    # edit: the time the images are noised to before sampling back, in (sampling.eps, 1]:
    # low keeps the image, 1 is plain sampling.
    editing.strength = 0.5
    # interpolate: "images" (the source's images in pairs, through their ODE noises)
    # or "classes" (the two classes of editing.prompt at fixed noise, one row per
    # sampling.samples_per_class).
    editing.interpolate = "images"
    # interpolate: images per pair or row, the ends included.
    editing.num_interpolations = 8
    return config


def optimization(
    *,
    num_steps: int,
    batch_size: int,
    learning_rate: float,
    warmup_steps: int,
    keep_checkpoints: int,
    weight_decay: float = 0.0,
) -> ml_collections.ConfigDict:
    """The fields of each trained network's optimisation: training, autoencoder, classifier."""
    group = ml_collections.ConfigDict()
    # Optimizer steps in total (a resumed run continues up to this number).
    group.num_steps = num_steps
    # Global batch size, split over all devices.
    group.batch_size = batch_size
    # Peak learning rate of AdamW.
    group.learning_rate = learning_rate
    # Linear warmup steps from 0 to the peak learning rate.
    group.warmup_steps = warmup_steps
    # After warmup: "cosine" decay to end_lr_factor * peak, or "constant".
    group.schedule = "cosine"
    # Final learning rate of the cosine schedule, as a fraction of the peak.
    group.end_lr_factor = 0.01
    # AdamW decoupled weight decay (applied to kernels only).
    group.weight_decay = weight_decay
    # Gradient clipping by global norm (0 disables).
    group.grad_clip = 1.0
    # Decay of the EMA of the parameters used for sampling and evaluation
    # (warmed up as min(decay, (1+n)/(10+n))).
    group.ema_decay = 0.999
    # A NaN/Inf loss or gradient: "stop" with an error naming the step (the last good
    # checkpoint is kept), or "skip" such steps (not applied; counted in the metrics).
    group.on_nonfinite = "stop"
    # Optimizer steps per compiled call (a lax.scan; unrolled on CPU); 0: per backend
    # (4 on CPU, 1 elsewhere, lowered until it divides num_steps and the intervals).
    group.steps_per_call = 0
    # Log metrics every this many steps (a multiple of steps_per_call).
    group.log_every = 100
    # Save a checkpoint (and for the score model, a sample grid) every this many
    # steps (a multiple of steps_per_call).
    group.checkpoint_every = 1000
    # Checkpoints to keep.
    group.keep_checkpoints = keep_checkpoints
    return group
