"""Recipes: YAML files loaded into typed configs; train a recipe, load a checkpoint, generate samples."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import yaml

from diffsuite.core.build import build_denoiser, build_loss, build_schedule
from diffsuite.core.checkpoint import CheckpointError, load_checkpoint, read_json
from diffsuite.core.classifier import ClassifierLoss, NoisyClassifier, classifier_guidance
from diffsuite.core.conditions import cond_to
from diffsuite.core.autoencoder import AutoencoderLoss, AutoencoderModel, KLAutoencoder, measure_scale
from diffsuite.core.config import (AutoencoderConfig, ClassifierConfig, ConfigError, LatentConfig, DiffusionConfig, DistillConfig, GanConfig, SampleConfig,
                                   TrainerConfig, deep_merge, from_dict, load_yaml, parse_overrides, to_dict)
from diffsuite.core.distill import ConsistencyFunction
from diffsuite.core.guidance import ClassifierFreeGuidance
from diffsuite.core.precision import SAMPLING_PRECISIONS, Resolved, choose as choose_precision
from diffsuite.core.samplers import sample
from diffsuite.core.trainer import Trainer
from diffsuite.core.utils import atomic_write_bytes, check_finite

from . import safety
from .registry import get_task

RECIPE_DIR = Path(__file__).resolve().parent
SECTIONS = ("task", "tour", "description", "model", "data", "diffusion", "train", "sample", "distill", "gan", "classifier",
            "autoencoder", "latent")
OPTIONAL = {"distill": DistillConfig, "gan": GanConfig, "classifier": ClassifierConfig,  # sections that mark a kind of run
            "autoencoder": AutoencoderConfig, "latent": LatentConfig}


@dataclass
class Recipe:
    """A whole recipe: the task name and one typed config per component."""

    task: str
    model: Any
    data: Any
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainerConfig = field(default_factory=TrainerConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    distill: Optional[DistillConfig] = None  # set for a distilled student (and by `diffsuite distill`)
    gan: Optional[GanConfig] = None  # set for a denoising diffusion GAN (trained adversarially, core.ddgan)
    classifier: Optional[ClassifierConfig] = None  # set for a noise-aware classifier p(y | x_t, t) (core.classifier)
    autoencoder: Optional[AutoencoderConfig] = None  # set for a latent diffusion's autoencoder (core.autoencoder)
    latent: Optional[LatentConfig] = None  # set for a diffusion model in an autoencoder's latent space (core.latent)
    tour: bool = False
    description: str = ""
    name: str = "recipe"


def task_of(r: Recipe):
    """The recipe's task, in its autoencoder's latent space when the recipe has a `latent` section (core.latent)."""
    task = get_task(r.task)
    if r.latent is None:
        return task
    if not r.latent.autoencoder:
        raise ConfigError("latent.autoencoder: give the autoencoder's run folder or checkpoint")
    if r.autoencoder is not None or r.classifier is not None:
        raise ConfigError("latent: a latent diffusion recipe cannot also have an autoencoder or classifier section")
    from diffsuite.core.latent import LatentTask
    return LatentTask(task, r.latent)


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file, or the bare name of a built-in recipe (with or without .yaml); a path that names no file
    (it has a folder part) is an error, never a built-in of the same name."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if len(p.parts) == 1:
        for cand in (RECIPE_DIR / p.name, RECIPE_DIR / f"{p.name}.yaml"):
            if cand.is_file():
                return cand
    what = "recipe file not found" if len(p.parts) > 1 else "recipe not found"
    raise ConfigError(f"{what}: {name_or_path} (built-in recipes, by bare name: {', '.join(list_recipes())})")


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_from_dict(data: dict, name: str = "recipe", where: str = "recipe") -> Recipe:
    """Build a typed Recipe from a nested dict; unknown sections or keys are errors listing the valid ones."""
    unknown = sorted(set(data) - set(SECTIONS) - {"name"})
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; valid sections: {list(SECTIONS)}")
    if "task" not in data:
        raise ConfigError(f"{where}: missing 'task' (one of the registered tasks)")
    task = get_task(data["task"])
    for sec in ("model", "data", "diffusion", "train", "sample", *OPTIONAL):
        if data.get(sec) is not None and not isinstance(data[sec], dict):
            raise ConfigError(f"{where}.{sec}: expected a mapping, got {type(data[sec]).__name__}")
    return Recipe(task=data["task"], name=data.get("name", name), tour=bool(data.get("tour", False)),
                  description=str(data.get("description", "")),
                  model=from_dict(task.ModelConfig, data.get("model"), f"{where}.model"),
                  data=from_dict(task.DataConfig, data.get("data"), f"{where}.data"),
                  diffusion=from_dict(DiffusionConfig, data.get("diffusion"), f"{where}.diffusion"),
                  train=from_dict(TrainerConfig, data.get("train"), f"{where}.train"),
                  sample=from_dict(SampleConfig, data.get("sample"), f"{where}.sample"),
                  **{sec: None if data.get(sec) is None else from_dict(cls, data[sec], f"{where}.{sec}")
                     for sec, cls in OPTIONAL.items()})


def load_recipe(recipe: str | Path | dict | Recipe, overrides: Sequence[str] = ()) -> Recipe:
    """Load a recipe file (or dict) and apply `section.key=value` overrides."""
    if isinstance(recipe, Recipe):
        recipe = recipe_to_dict(recipe)
    if isinstance(recipe, dict):
        data, name, where = recipe, recipe.get("name", "recipe"), "recipe"
    else:
        path = find_recipe(recipe)
        data, name, where = load_yaml(path), path.stem, str(path)
    data = deep_merge(data, parse_overrides(list(overrides)))
    return recipe_from_dict(data, name, where)


def recipe_to_dict(r: Recipe) -> dict:
    d = {"name": r.name, "task": r.task, "tour": r.tour, "description": r.description,
         **{k: to_dict(getattr(r, k)) for k in ("model", "data", "diffusion", "train", "sample")}}
    for sec in OPTIONAL:
        if getattr(r, sec) is not None:
            d[sec] = to_dict(getattr(r, sec))
    return d


def make_sample_fn(task, recipe: Recipe):
    """The trainer's periodic sampling callback: sample with the recipe's sampler settings, save via the task."""
    def fn(denoiser, step, out_dir):
        x, cond = generate(denoiser, task, recipe, progress=False)
        task.save_samples(x, cond, out_dir, recipe)
    return fn


def train(recipe, overrides: Sequence[str] = (), out_dir: Optional[str | Path] = None,
          resume: Optional[str] = None, stop_at: Optional[int] = None, overwrite: bool = False) -> Path:
    """Train a recipe; returns the run folder (config, logs, checkpoints, samples).

    A run folder that already holds files is refused unless `resume` ('auto', a run folder or a checkpoint) or
    `overwrite` (the old run is moved aside to <run>.replaced-<time>) is given. On resume, the recipe may change what
    does not change the model (train.lr, steps, logging, sampling, ...: applied and printed); a change to the model,
    the diffusion or the data is refused before anything is written (safety.check_resume_config)."""
    r = load_recipe(recipe, overrides)
    task = task_of(r)
    r.data = task.measure(r.data)
    r.model = task.configure(r.model, r.data)
    run = Path(out_dir) if out_dir else Path("runs") / f"{r.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = recipe_to_dict(r)
    ckpt, changes = safety.prepare_run_folder(run, resume, overwrite, cfg)
    denoiser, dataset = build_for_training(task, r)
    trainer = Trainer(denoiser, dataset, r.train, run, training_loss(task, r), config=cfg,
                      cond_drop_prob=r.diffusion.cond_drop_prob, null_cond=task.null_condition(r),
                      sample_fn=None if r.classifier or r.autoencoder else make_sample_fn(task, r),
                      finish_fn=scale_measurer(dataset, r) if r.autoencoder else None)
    trainer.resume_changes = changes
    if trainer.acc.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run / "config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
    trainer.train(resume=ckpt, stop_at=stop_at)
    return run


def training_loss(task, r: Recipe):
    """The recipe's objective: the diffusion loss, with a `gan` section the DDGAN objective with the task's
    discriminator (core.ddgan), with a `classifier` section the noise-aware classifier's cross-entropy."""
    if r.classifier is not None:
        return ClassifierLoss()
    if r.autoencoder is not None:
        return AutoencoderLoss(r.autoencoder.kl_weight, r.autoencoder.recon)
    if r.gan is None:
        return build_loss(r.diffusion, task.loss_weights(r.model, r.data))
    from diffsuite.core.ddgan import DenoisingDiffusionGAN
    if r.diffusion.prediction != "x0":
        raise ConfigError(f"gan: a denoising diffusion GAN's generator predicts x0; set diffusion.prediction=x0 "
                          f"(got {r.diffusion.prediction!r})")
    if not getattr(r.model, "z_channels", 0):
        raise ConfigError("gan: the generator needs a latent: set model.z_channels >= 1")
    torch.manual_seed(r.train.seed + 1)
    D = task.build_discriminator(r.model, r.data, r.gan)
    return DenoisingDiffusionGAN(D, r.gan.r1_gamma, r.gan.d_lr, tuple(r.gan.d_betas))


def scale_measurer(dataset, r: Recipe):
    """The trainer's finish hook of an autoencoder run: the latent scale factor, 1 / std of posterior samples of
    `autoencoder.scale_batches` training batches (seeded) under the EMA weights, stored in the net and its EMA."""
    from diffsuite.core.trainer import batch_of

    def fn(trainer):
        ae = trainer.ema_denoiser().net
        g = torch.Generator().manual_seed(r.train.seed)
        n, bs = len(dataset), r.train.batch_size
        idx = torch.randperm(n, generator=g)[: r.autoencoder.scale_batches * bs].tolist()
        batches = [batch_of(dataset, idx[k:k + bs])[0] for k in range(0, len(idx), bs)]
        scale = torch.tensor(measure_scale(ae, batches, g))
        trainer.net.scale.fill_(scale)
        trainer.ema.shadow["scale"].fill_(scale)
        print(f"latent scale factor: {scale.item():.5g} (1 / std of the posterior samples of {len(idx)} training items)")
    return fn


def build_for_training(task, r: Recipe):
    """(denoiser, training dataset) of a recipe, each mistake in it a ConfigError before anything is written: model and
    data disagreeing, sizes the network cannot be built with, missing / empty / unreadable data, then one dry run."""
    try:
        task.sample_shape(r.model, r.data)  # the task checks that model and data agree before any training
    except ValueError as e:
        raise ConfigError(str(e)) from e
    torch.manual_seed(r.train.seed)
    denoiser = build_model(task, r)
    try:
        dataset = task.build_dataset(r.data, "train")
    except (ValueError, FileNotFoundError) as e:  # the user's data: missing, empty, unreadable, or too small
        raise ConfigError(f"data: {e}") from e
    if len(dataset) == 0:
        raise ConfigError(f"data: the training split of {r.name}'s data is empty")
    if r.autoencoder is None:
        dry_run(denoiser, dataset, r.diffusion.T)
    return denoiser, dataset


def build_model(task, r: Recipe, for_sampling: bool = False):
    """The recipe's trainable model: the task's network in a Denoiser, or with a `classifier` section the task's
    classifier network in a NoisyClassifier (on the same schedule)."""
    try:
        if r.autoencoder is not None:
            a = r.autoencoder
            enc, dec = task.build_autoencoder(r.model, r.data, a)
            return AutoencoderModel(KLAutoencoder(enc, dec, a.factor, a.latent_channels))
        if r.classifier is None:
            return build_denoiser(task.build_net(r.model, r.diffusion), r.diffusion, for_sampling)
        if r.gan is not None or r.distill is not None:
            raise ConfigError("classifier: a noise-aware classifier recipe cannot also have a gan or distill section")
        if r.diffusion.cond_drop_prob:
            raise ConfigError(f"classifier: the labels are the classifier's targets and are never dropped; set "
                              f"diffusion.cond_drop_prob=0 (got {r.diffusion.cond_drop_prob})")
        return NoisyClassifier(task.build_classifier(r.model, r.data, r.classifier), build_schedule(r.diffusion))
    except ValueError as e:  # sizes the network cannot be built with (checked by its constructor)
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"model: {e}") from e


def dry_run(denoiser, dataset, T: int) -> None:
    """One forward pass on one training item before the first step (and before anything is written), so a network
    that cannot run on this data (shapes, learned variance, conditioning) is a ConfigError now, not a crash later."""
    from diffsuite.core.trainer import batch_of
    x0, cond = batch_of(dataset, [0])
    rng_state = torch.get_rng_state()  # the dry run must not move the global RNG (resumes and seeds stay exact)
    try:
        with torch.no_grad():
            denoiser(x0, torch.full((x0.shape[0],), float(T - 1)), cond)
    except ValueError as e:
        raise ConfigError(f"the model cannot run on this data: {e}") from e
    finally:
        torch.set_rng_state(rng_state)


@dataclass
class Loaded:
    task: Any
    recipe: Recipe
    denoiser: Any
    checkpoint: Path
    step: int
    precision: Optional[Resolved] = None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its latest checkpoint)."""
    p = Path(path)
    if (p / "state.json").is_file():
        return p
    latest = p / "checkpoints" / "latest.json"
    if latest.is_file():
        return p / "checkpoints" / read_json(latest)["path"]
    if (p / "latest.json").is_file():
        return p / read_json(p / "latest.json")["path"]
    raise CheckpointError(f"no checkpoint at {p}: expected a checkpoint folder (with state.json) or a run folder")


def _read(path, ema: bool):
    """(checkpoint folder, weights of the chosen group, trainer state, saved config); non-finite weights are refused."""
    ckpt = resolve_checkpoint(path)
    group = "ema" if ema else "model"
    tensors, state, config = load_checkpoint(ckpt, groups=(group,))
    bad = [k for k, v in tensors[group].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{ckpt}/{group}.safetensors: {len(bad)} weight tensor(s) hold NaN or infinite values "
                              f"(first: {bad[0]}): this checkpoint is from a diverged run; use an earlier one")
    return ckpt, f"{ckpt}/{group}.safetensors", tensors[group], state, config


def _load_weights(module, weights: dict, where: str):
    sd = module.state_dict()
    try:
        module.load_state_dict({k: v.to(sd[k].dtype) if k in sd else v for k, v in weights.items()})
    except RuntimeError as e:
        raise CheckpointError(f"{where} does not match the network its config builds: {e}") from e


def load(path: str | Path, ema: bool = True, device: str | torch.device = "cpu", precision: str = "fp32",
         task: Optional[str] = None, command: str = "this command", sample_overrides: Sequence[str] = ()) -> Loaded:
    """Load a checkpoint without its recipe: the config saved beside the weights rebuilds the model.

    precision: auto | fp32 | bf16, the network's autocast at sampling time (core.precision's rule; the sampling
    commands default to auto and print the choice). task: the task the command needs (another is a ConfigError).
    sample_overrides: `sample.key=value` settings applied to the loaded recipe's sample section (checked)."""
    if precision not in SAMPLING_PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: valid values are {list(SAMPLING_PRECISIONS)}")
    ckpt, where, weights, state, config = _read(path, ema)
    if config.get("classifier") is not None:
        raise ConfigError(f"{path} is a noise-aware classifier, not a diffusion model: {command} needs a diffusion "
                          "checkpoint (give the classifier to --classifier)")
    if config.get("autoencoder") is not None:
        raise ConfigError(f"{path} is an autoencoder, not a diffusion model: {command} needs a diffusion checkpoint "
                          "(a latent diffusion recipe names the autoencoder in latent.autoencoder)")
    if task is not None and config.get("task") != task:
        raise ConfigError(f"{command} needs a {task} checkpoint, but {path} is a {config.get('task')!r} checkpoint")
    bad = [o for o in sample_overrides if not o.startswith("sample.")]
    if bad:
        raise ConfigError(f"{command}: only sample.* settings can be changed when loading a checkpoint, got {bad}")
    r = load_recipe(config, sample_overrides)
    if r.distill is not None and "form" not in config["distill"]:  # a student saved before the key: made as a blend
        r = dataclasses.replace(r, distill=dataclasses.replace(r.distill, form="blend"))
    task = task_of(r)
    den = build_model(task, r, for_sampling=True)
    _load_weights(den.net, weights, where)
    den = den.to(device).eval()
    chosen = choose_precision(precision, device, quiet=precision == "fp32")
    den.autocast_dtype = chosen.dtype
    if r.distill is not None and r.distill.method == "consistency":  # the student is the consistency function f
        den = ConsistencyFunction(den, r.distill.sigma_data, r.distill.form).eval()
    return Loaded(task, r, den, ckpt, state["step"], chosen)


def load_autoencoder(path: str | Path, ema: bool = True, task: Optional[str] = None) -> KLAutoencoder:
    """A trained autoencoder (a run from a recipe with an `autoencoder` section), frozen, in eval mode, with the scale
    factor measured when its training finished; `task`: the task it must belong to."""
    ckpt, where, weights, _, config = _read(path, ema)
    if config.get("autoencoder") is None:
        raise ConfigError(f"latent.autoencoder {path}: not an autoencoder (its recipe has no autoencoder section)")
    r = load_recipe(config)
    if task is not None and r.task != task:
        raise ConfigError(f"latent.autoencoder {path} is a {r.task!r} autoencoder, not a {task!r} one")
    ae = build_model(get_task(r.task), r).net
    _load_weights(ae, weights, where)
    if not float(ae.scale) > 0:
        raise ConfigError(f"latent.autoencoder {ckpt}: its latent scale factor was never measured (it is measured when "
                          "training reaches train.steps): finish its training (--resume auto), or use a finished run")
    ae.checkpoint, ae.recipe = ckpt, r
    return ae.eval().requires_grad_(False)


def load_classifier(path: str | Path, ema: bool = True, device: str | torch.device = "cpu",
                    for_model: Optional[Loaded] = None) -> NoisyClassifier:
    """A noise-aware classifier checkpoint (a run trained from a recipe with a `classifier` section), in eval mode;
    for_model: the diffusion checkpoint it will guide, whose task and schedule it must share."""
    ckpt, where, weights, _, config = _read(path, ema)
    if config.get("classifier") is None:
        raise ConfigError(f"--classifier {path}: not a noise-aware classifier (its recipe has no classifier section)")
    r = load_recipe(config)
    if for_model is not None and r.task != for_model.recipe.task:
        raise ConfigError(f"--classifier {path} is a {r.task!r} classifier but the model is a "
                          f"{for_model.recipe.task!r} checkpoint")
    clf = build_model(get_task(r.task), r)
    _load_weights(clf.net, weights, where)
    clf.recipe = r  # (what labels it takes: `guided` asks the task for them with this recipe)
    return clf.to(device).eval().requires_grad_(False)


def sampler_options(s, sampler: str, eta: Optional[float] = None) -> dict:
    """The keyword options of core sampler `sampler` taken from a recipe's sample section (eta overridable)."""
    if sampler == "pc":  # predictor-corrector: the corrector's settings and the predictor's own options
        if s.predictor == "pc":
            raise ConfigError("sample.predictor: the predictor of pc must be another sampler")
        return {"predictor": s.predictor, "corrector_steps": s.corrector_steps, "snr": s.snr,
                **sampler_options(s, s.predictor, eta)}
    opts = {}
    if sampler in ("ddim", "repaint"):
        opts["eta"] = s.eta if eta is None else eta
    if sampler == "ddpm":
        opts["variance"] = s.variance
    if sampler in ("dpmpp_2m", "dpmpp_2m_sde") and s.lambda_min is not None:
        opts["lambda_min"] = s.lambda_min
    if sampler == "annealed_langevin":
        opts["steps_per_level"] = s.steps_per_level
    if s.spacing and sampler in ("ddim", "dpmpp_2m", "dpmpp_2m_sde", "ddpm", "repaint", "consistency", "ddgan",
                                  "annealed_langevin"):
        opts["spacing"] = s.spacing
    return opts


def guided(denoiser, task, recipe: Recipe, n: int, w: float, cond=None, generator=None,
           classifier: Optional[NoisyClassifier] = None, classifier_scale: float = 0.0, unconditional: bool = False):
    """(the denoiser a sampler runs, the conditions of n samples): classifier-free guidance at w (when the task has a
    null condition), then classifier guidance by `classifier` at scale s toward the conditions (labels cycling over the
    classifier's classes when the model takes none). unconditional: the model sees the null condition and only the
    classifier sees the labels (Dhariwal & Nichol's guided unconditional model)."""
    if cond is None:
        cond = task.sample_cond(n, recipe, generator)
    model_cond = cond is not None
    null_cond = task.null_condition(recipe)
    if unconditional and (classifier is None or not model_cond or null_cond is None or w):
        raise ConfigError("--unconditional runs a conditional model with its null condition under classifier guidance: "
                          "it needs --classifier, a model with a null condition, and no --guidance")
    den = denoiser
    if w and model_cond and null_cond is not None:
        den = ClassifierFreeGuidance(denoiser, w, null_cond)
    if classifier is None:
        return den, cond
    if not model_cond:  # the labels the classifier's own recipe samples (its classes, cycling)
        cond = task.sample_cond(n, classifier.recipe, generator)
    null = null_cond if unconditional else (None if model_cond else (lambda c: None))
    try:
        return classifier_guidance(den, classifier, classifier_scale, null), cond
    except ValueError as e:
        raise ConfigError(str(e)) from e


@torch.no_grad()
def generate(denoiser, task, recipe: Recipe, n: Optional[int] = None, sampler: Optional[str] = None,
             steps: Optional[int] = None, seed: Optional[int] = None, guidance: Optional[float] = None,
             eta: Optional[float] = None, cond=None, hooks=(), progress: bool = True, device=None,
             classifier: Optional[NoisyClassifier] = None, classifier_scale: float = 0.0, unconditional: bool = False):
    """Sample n items with the recipe's defaults, any of which can be overridden; returns (x, cond). See `guided` for
    the guidance arguments."""
    s = recipe.sample
    n = n or s.n
    sampler, steps = sampler or s.sampler, steps or s.steps
    seed = s.seed if seed is None else seed
    w = s.guidance if guidance is None else guidance
    device = device or next(denoiser.parameters()).device
    g = torch.Generator().manual_seed(seed)
    den, cond = guided(denoiser, task, recipe, n, w, cond, g, classifier, classifier_scale, unconditional)
    cond = cond_to(cond, device)
    opts = sampler_options(s, sampler, eta)
    shape = (n, *task.sample_shape(recipe.model, recipe.data))
    x = sample(den, shape, sampler, steps, generator=g, cond=cond, hooks=hooks, device=device,
               progress=progress, **opts)
    check_finite(x, f"{sampler} ({steps} steps) samples", "try another sampler or more steps, or an earlier checkpoint")
    return task.finish(x, cond, recipe), cond


def load_yaml_tour(name: str) -> bool:
    """Whether built-in recipe `name` is marked `tour: true`."""
    return bool(load_yaml(find_recipe(name)).get("tour", False))
