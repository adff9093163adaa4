"""Image commands: `diffsuite eval` (digits-FID, conditional accuracy, bits/dim, optional Inception FID),
`diffsuite image-inpaint` (fill a masked region), `diffsuite image-path` (a denoising-path figure) and
`diffsuite upscale` (SR3 super-resolution of an image of any size) and `diffsuite restore` (Palette: colorize,
inpaint, uncrop an image of any size)."""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffsuite.core.conditions import cond_rows
from diffsuite.core.config import ConfigError, nonnegative_int, positive_int
from diffsuite.core.guidance import ClassifierFreeGuidance, repaint as repaint_sample
from diffsuite.core.losses import variational_bound
from diffsuite.core.samplers import sample
from diffsuite.core.degrade import inpaint_source, project_consistent, to_grayscale, upsample
from diffsuite.core.tiles import TiledDenoiser
from diffsuite.core.utils import atomic_write_json

from . import edit, metrics


def sample_images(denoiser, task, recipe, n: int, sampler: str | None = None, steps: int | None = None,
                  guidance: float | None = None, seed: int = 0, cond=None, hooks=(), eta: float | None = None,
                  progress: bool = False, batch: int = 500, classifier=None, classifier_scale: float = 0.0,
                  unconditional: bool = False):
    """n images with the recipe's sampling defaults (each overridable), classifier-free guided when w != 0 and
    classifier guided with `classifier` (see recipes.run.guided)."""
    from diffsuite.recipes.run import guided, sampler_options
    s = recipe.sample
    sampler, steps = sampler or s.sampler, steps or s.steps
    w = s.guidance if guidance is None else guidance
    g = torch.Generator().manual_seed(seed)
    den, cond = guided(denoiser, task, recipe, n, w, cond, g, classifier, classifier_scale, unconditional)
    opts = sampler_options(s, sampler, eta)
    shape = task.sample_shape(recipe.model, recipe.data)
    xs = []
    for i in range(0, n, batch):
        c = cond_rows(cond, slice(i, i + batch))
        xs.append(sample(den, (min(batch, n - i), *shape), sampler, steps, generator=g, cond=c, hooks=hooks,
                         progress=progress, **opts))
    return task.finish(torch.cat(xs), cond, recipe), cond


def add_commands(subparsers) -> None:
    e = subparsers.add_parser("eval", help="image: digits-FID, conditional accuracy, bits/dim (and FID with "
                              "local Inception weights)")
    e.add_argument("checkpoint")
    e.add_argument("--n", type=positive_int, default=500, help="generated images for FID / accuracy")
    e.add_argument("--sampler", default=None)
    e.add_argument("--steps", type=positive_int, default=None)
    e.add_argument("--guidance", type=float, default=None)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--bpd-n", type=nonnegative_int, default=64, help="test images for bits/dim (0: skip; T network calls each)")
    e.add_argument("--inception", help="local TorchScript Inception-v3 file for standard FID")
    e.add_argument("--out", help="JSON path (default: <run>/eval/<checkpoint name>.json)")
    e.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("image-inpaint", help="image: fill the masked region of an image")
    p.add_argument("checkpoint")
    p.add_argument("--inpaint", metavar="IMAGE", help="image to fill (default: test-split images of the dataset)")
    p.add_argument("--mask", default="centre-box", help=f"mask image (white = keep) or one of {edit.PRESET_MASKS}")
    p.add_argument("--n", type=positive_int, default=8)
    p.add_argument("--repaint", action="store_true", help="RePaint resampling (Lugmayr et al. 2022)")
    _common(p)
    p.set_defaults(func=cmd_inpaint)

    u = subparsers.add_parser("upscale", help="image: super-resolve an image of any size with an SR3 checkpoint")
    u.add_argument("checkpoint")
    u.add_argument("--image", required=True, help="the low-resolution image (PNG / JPEG, any size)")
    u.add_argument("--no-project", dest="project", action="store_false", help="keep the samples as drawn (default: "
                   "each is projected onto the images whose box downsampling is the input, core.degrade.project_consistent)")
    _tiled(u)
    u.set_defaults(func=cmd_upscale)

    rs = subparsers.add_parser("restore", help="image: colorize, inpaint or uncrop an image with a Palette checkpoint")
    rs.add_argument("checkpoint")
    rs.add_argument("--task", required=True, choices=RESTORE_TASKS)
    rs.add_argument("--image", required=True, help="the image (PNG / JPEG, any size)")
    rs.add_argument("--mask", default=None, help=f"inpaint: a mask image of the image's size (white = keep) or one of "
                    f"{list(edit.PRESET_MASKS)} (default centre-box)")
    rs.add_argument("--extend", type=positive_int, default=None, help="uncrop: pixels to add on the right (default: "
                    "the share of the border the model was trained on)")
    _tiled(rs)
    rs.set_defaults(func=cmd_restore)

    q = subparsers.add_parser("image-path", help="image: figure of one sample's denoising path x_t")
    q.add_argument("checkpoint")
    q.add_argument("--frames", type=positive_int, default=8)
    q.add_argument("--label", type=int, default=None, help="class to draw (conditional models)")
    _common(q)
    q.set_defaults(func=cmd_path)


def tiled_samples(loaded, source: torch.Tensor, size: tuple, samples: int = 1, sampler: str | None = None,
                  steps: int | None = None, seed: int = 0, overlap: int | None = None):
    """`samples` images of `size` (H, W) given a source image of that size (1, S, H, W), sampled through overlapping
    tiles of the model's size blended at every step (core.tiles: no seams); a canvas smaller than a tile is padded.
    Returns (samples (N, C, H, W), the overlap used)."""
    from diffsuite.recipes.run import sampler_options
    r, d = loaded.recipe, loaded.recipe.data
    H, W = size
    tile = d.image_size
    src = F.pad(source, (0, max(0, tile - W), 0, max(0, tile - H)), mode="replicate")
    den = TiledDenoiser(loaded.denoiser, tile, tile // 4 if overlap is None else overlap)
    sampler, steps = sampler or r.sample.sampler, steps or r.sample.steps
    cond = {"source": src.expand(samples, -1, -1, -1)}
    x = sample(den, (samples, d.channels, *src.shape[2:]), sampler, steps, generator=torch.Generator().manual_seed(seed),
               cond=cond, **sampler_options(r.sample, sampler))
    return loaded.task.finish(x, cond, r)[..., :H, :W], den.overlap


def write_results(x: torch.Tensor, out: str | Path, info: dict) -> dict:
    """OUT.png (the first sample); with several samples also OUT-<k>.png each and OUT-mean.png (their per-pixel mean);
    OUT.json beside them."""
    out = Path(out)
    files = {"image": str(edit.write_png(x[0], out))}
    if len(x) > 1:
        files["samples"] = [str(edit.write_png(xi, out.with_name(f"{out.stem}-{k}{out.suffix}"))) for k, xi in enumerate(x)]
        files["mean"] = str(edit.write_png(x.mean(0), out.with_name(f"{out.stem}-mean{out.suffix}")))
    atomic_write_json(out.with_suffix(".json"), {**info, "files": files})
    return files


KINDS = {"sr": "super-resolution (SR3)", "colorize": "colorization", "inpaint": "inpainting", "uncrop": "uncropping"}


def _check_task(loaded, degradation: str, command: str) -> None:
    got = loaded.recipe.data.degradation
    if got != degradation:
        raise ConfigError(f"{command} needs a {KINDS[degradation]} checkpoint (data.degradation={degradation}); "
                          f"{loaded.checkpoint} was trained with data.degradation={got}")


def upscale(loaded, image: str, out: str | Path, samples: int = 1, sampler: str | None = None,
            steps: int | None = None, seed: int = 0, overlap: int | None = None, project: bool = True) -> dict:
    """SR3 on an image of any size: its bicubic upsampling by the model's factor is the source, and each sample is
    projected onto the images consistent with the input unless `project` is false (write_results names the files)."""
    _check_task(loaded, "sr", "upscale")
    d = loaded.recipe.data
    low = edit.read_full(image, d.channels)
    if min(low.shape[2:]) < 2:
        raise ConfigError(f"--image {image}: {low.shape[3]}x{low.shape[2]} pixels is too small to upscale (at least 2x2)")
    H, W = low.shape[2] * d.factor, low.shape[3] * d.factor
    x, overlap = tiled_samples(loaded, upsample(low, d.factor), (H, W), samples, sampler, steps, seed, overlap)
    x = project_consistent(x, low, d.factor) if project else x
    info = {"checkpoint": str(loaded.checkpoint), "input": str(image), "input_size": [low.shape[3], low.shape[2]],
            "output_size": [W, H], "factor": d.factor, "samples": samples, "sampler": sampler or loaded.recipe.sample.sampler,
            "steps": steps or loaded.recipe.sample.steps, "seed": seed, "tile": d.image_size, "overlap": overlap, "projected": project}
    info["files"] = write_results(x, out, info)
    return info


def cmd_upscale(args) -> int:
    loaded = args.load(args.checkpoint, task="image", command="diffsuite upscale")
    info = upscale(loaded, args.image, args.out, args.samples, args.sampler, args.steps, args.seed, args.overlap,
                   args.project)
    print(f"{info['input_size'][0]}x{info['input_size'][1]} -> {info['output_size'][0]}x{info['output_size'][1]}: "
          f"written {info['files']['image']}")
    return 0


RESTORE_TASKS = ("colorize", "inpaint", "uncrop")


def restore_source(task: str, img: torch.Tensor, mask: str | None, border: float, extend: int | None):
    """(source, known values, known mask or None) for Palette's tasks on an image (1, C, H, W): colorize gives its
    grayscale; inpaint the known pixels and the mask; uncrop a canvas extended on the right by `extend` pixels (default
    the share of the border the model was trained to fill), the image known."""
    H, W = img.shape[2:]
    if task == "colorize":
        return to_grayscale(img), img, None
    if task == "inpaint":
        m = edit.read_mask(mask, H, W)
    else:
        e = extend if extend is not None else max(1, round(W * border / (1 - border)))
        img = F.pad(img, (0, e))
        m = torch.ones(1, 1, H, W + e)
        m[..., W:] = 0
    return inpaint_source(img, m), img, m


def restore(loaded, task: str, image: str, out: str | Path, mask: str | None = None, samples: int = 1,
            sampler: str | None = None, steps: int | None = None, seed: int = 0, overlap: int | None = None,
            extend: int | None = None) -> dict:
    """Palette on an image of any size (colorize, inpaint, uncrop), through tiles like `upscale`; known pixels are
    kept exactly."""
    if task not in RESTORE_TASKS:
        raise ConfigError(f"restore --task {task!r}: valid tasks are {list(RESTORE_TASKS)}")
    _check_task(loaded, task, f"restore --task {task}")
    if mask is not None and task != "inpaint":
        raise ConfigError(f"restore: --mask is for --task inpaint, not {task}")
    d = loaded.recipe.data
    img = edit.read_full(image, d.channels)
    source, known, m = restore_source(task, img, mask, d.border, extend)
    x, overlap = tiled_samples(loaded, source, tuple(known.shape[2:]), samples, sampler, steps, seed, overlap)
    if m is not None:
        x = m * known + (1 - m) * x
    info = {"checkpoint": str(loaded.checkpoint), "task": task, "input": str(image), "mask": mask,
            "input_size": [img.shape[3], img.shape[2]], "output_size": [x.shape[3], x.shape[2]], "samples": samples,
            "sampler": sampler or loaded.recipe.sample.sampler, "steps": steps or loaded.recipe.sample.steps,
            "seed": seed, "tile": d.image_size, "overlap": overlap}
    info["files"] = write_results(x, out, info)
    return info


def cmd_restore(args) -> int:
    loaded = args.load(args.checkpoint, task="image", command="diffsuite restore")
    info = restore(loaded, args.task, args.image, args.out, args.mask, args.samples, args.sampler, args.steps,
                   args.seed, args.overlap, args.extend)
    print(f"{args.task}: {info['input_size'][0]}x{info['input_size'][1]} -> {info['output_size'][0]}x"
          f"{info['output_size'][1]}: written {info['files']['image']}")
    return 0


def _tiled(p) -> None:
    """The options of the commands that sample an image of any size through tiles (upscale, restore)."""
    p.add_argument("--out", required=True, help="output PNG (with --samples N > 1 also OUT-<k>.png and OUT-mean.png)")
    p.add_argument("--samples", type=positive_int, default=1)
    p.add_argument("--sampler", default=None)
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overlap", type=nonnegative_int, default=None, help="tile overlap in output pixels "
                   "(default a quarter of the tile)")


def _common(p) -> None:
    p.add_argument("--sampler", default=None)
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")


def evaluate(loaded, n: int = 500, sampler=None, steps=None, guidance=None, seed: int = 0, bpd_n: int = 64,
             inception: str | None = None, progress: bool = False, classifier=None, classifier_scale: float = 0.0,
             unconditional: bool = False, split: str = "test") -> dict:
    """All image metrics of a loaded checkpoint (see the module docstring), against the `split` images (val: for
    choosing settings); returns a JSON-able dict."""
    task, r, den = loaded.task, loaded.recipe, loaded.denoiser
    latent = task.pixel_task is not task  # latent diffusion: samples are decoded to pixels, the test images are pixels
    test = task.pixel_task.build_dataset(r.data, split)
    t0 = time.time()
    x, cond = sample_images(den, task, r, n, sampler, steps, guidance, seed, progress=progress, classifier=classifier,
                            classifier_scale=classifier_scale, unconditional=unconditional)
    res = {"n": n, "split": split, "sampler": sampler or r.sample.sampler, "steps": steps or r.sample.steps,
           "guidance": r.sample.guidance if guidance is None else guidance, "seed": seed,
           "sample_seconds": round(time.time() - t0, 1)}
    if classifier is not None:
        res.update(classifier_scale=classifier_scale, unconditional=unconditional)
    if r.data.source == "digits":
        clf, info = metrics.digits_classifier(r.data.image_size, r.data.digits_mode)
        res["digits_fid"] = metrics.fid(clf.features, test.x, x)
        res["classifier_test_accuracy"] = info["test_accuracy"]
        labels = cond.get("label") if isinstance(cond, dict) else cond
        if labels is not None:
            res["conditional_accuracy"] = metrics.accuracy(clf, x, labels)
    if inception:
        res["fid_inception"] = metrics.fid(metrics.inception_features(inception), test.x, x)
    if bpd_n and (r.data.degradation or latent):  # p(x | source) needs the sources; a latent model's bound is of z
        res["bits_per_dim"] = None
    elif bpd_n:
        xb = test.x[:bpd_n]
        cb = None if test.labels is None or not r.model.num_classes else test.labels[:bpd_n]
        with torch.no_grad():
            bpd = variational_bound(den, xb, torch.Generator().manual_seed(seed), cond=cb)["total_bpd"]
        res["bits_per_dim"] = float(bpd.mean())
        res["bpd_images"] = len(xb)
    return res


def cmd_eval(args) -> int:
    loaded = args.load(args.checkpoint, task="image", command="diffsuite eval")
    clf = args.classifier_of(args, loaded)
    res = evaluate(loaded, args.n, args.sampler, args.steps, args.guidance, args.seed, args.bpd_n, args.inception,
                   progress=True, classifier=clf, classifier_scale=args.classifier_scale,
                   unconditional=args.unconditional)
    if clf is not None:
        res["classifier"] = args.classifier
    res["checkpoint"] = str(loaded.checkpoint)
    ckpt = Path(loaded.checkpoint)  # outside the checkpoint folder, which pruning may delete
    out = Path(args.out) if args.out else ckpt.parent.parent / "eval" / f"{ckpt.name}.json"
    atomic_write_json(out, res)
    for k, v in res.items():
        print(f"{k:26s} {v}")
    print(f"written {out}")
    return 0


def _known_images(loaded, image: str | None, n: int):
    """The images to inpaint, (n, C, S, S) in [-1, 1], and their labels: n copies of `image`, or n test images."""
    r = loaded.recipe
    if image:
        if not Path(image).is_file():
            raise FileNotFoundError(f"--inpaint: image file not found: {image}")
        return edit.load_known(image, r.data.image_size, r.data.channels).expand(n, -1, -1, -1), None
    test = loaded.task.pixel_task.build_dataset(r.data, "test")
    return test.x[:n], (None if test.labels is None or not r.model.num_classes else test.labels[:n])


def _mask(name: str, size: int) -> torch.Tensor:
    if name in edit.PRESET_MASKS:
        return edit.preset_mask(name, size)
    if not Path(name).is_file():
        raise ConfigError(f"--mask: {name!r} is neither a preset mask {list(edit.PRESET_MASKS)} nor a mask image file")
    return edit.load_mask(name, size)


def inpaint(loaded, out: str | Path, image: str | None = None, mask: str | None = None, n: int | None = None,
            repaint: bool = False, sampler: str | None = None, steps: int | None = None,
            guidance: float | None = None, seed: int = 0, eta: float | None = None) -> dict:
    """Fill the masked region of `image` (None: the first n test images) with a loaded image checkpoint.

    mask: a mask image (white = keep) or one of edit.PRESET_MASKS (default 'centre-box'); n: how many fills
    (default 8); repaint: RePaint resampling instead of replacement in the recipe's (or the given) sampler.
    Writes inpaint.png (rows: original, masked, inpainted) and inpaint.json under out; returns {name: path}.
    Shared by `diffsuite image-inpaint` and `diffsuite sample --inpaint/--mask` (through ImageTask.inpaint)."""
    r, den = loaded.recipe, loaded.denoiser
    mask_name, n = mask or "centre-box", n or 8
    repaint = repaint or sampler == "repaint"
    size = r.data.image_size
    m = _mask(mask_name, size)
    known, cond = _known_images(loaded, image, n)
    z, m_z = loaded.task.inpaint_space(known, m)  # (latent diffusion: the latents, the mask downsampled)
    hook = edit.inpaint_hook(den.schedule, m_z, z)
    w = r.sample.guidance if guidance is None else guidance
    g = torch.Generator().manual_seed(seed)
    if repaint:
        model = ClassifierFreeGuidance(den, w, loaded.task.null_condition(loaded.recipe)) if w and cond is not None else den
        x = repaint_sample(model, torch.randn(z.shape, generator=g), steps or r.sample.steps, inpaint=hook,
                           cond=cond, generator=g)
        x = loaded.task.finish(x, cond, r)
    else:
        x, _ = sample_images(den, loaded.task, r, len(known), sampler, steps, guidance, seed, cond=cond,
                             hooks=[hook], eta=eta)
    out = Path(out)
    from .task import save_grid
    grid = torch.cat([known, known * m + (1 - m) * -1, x])
    png = save_grid(grid, out / "inpaint.png", len(known), scale=max(1, 64 // size))
    info = {"checkpoint": str(loaded.checkpoint), "step": loaded.step, "image": image, "mask": mask_name,
            "n": len(known), "repaint": bool(repaint),
            "sampler": "repaint" if repaint else sampler or r.sample.sampler, "steps": steps or r.sample.steps,
            "seed": seed, "rows": ["original", "masked (black = filled)", "inpainted"],
            "labels": None if cond is None else cond.tolist()}
    atomic_write_json(out / "inpaint.json", info)
    return {"grid": str(png), "json": str(out / "inpaint.json")}


def cmd_inpaint(args) -> int:
    loaded = args.load(args.checkpoint, task="image", command="diffsuite image-inpaint")
    files = inpaint(loaded, args.out, image=args.inpaint, mask=args.mask, n=args.n, repaint=args.repaint,
                    sampler=args.sampler, steps=args.steps, guidance=args.guidance, seed=args.seed)
    print(f"written {files['grid']}")
    return 0


def cmd_path(args) -> int:
    loaded = args.load(args.checkpoint, task="image", command="diffsuite image-path")
    r = loaded.recipe
    k = r.model.num_classes
    if args.label is not None and not (k and 0 <= args.label < k):
        raise ConfigError(f"--label {args.label}: " + (f"this model's classes are 0-{k - 1}" if k else
                                                       "this model is unconditional (no classes)"))
    cond = torch.tensor([args.label]) if args.label is not None else None
    rec = edit.RecordPath()
    sample_images(loaded.denoiser, loaded.task, r, 1, args.sampler, args.steps, args.guidance, args.seed,
                  cond=cond, hooks=[rec])
    out = edit.path_figure(rec, Path(args.out) / "denoising_path.png", args.frames)
    print(f"written {out}")
    return 0
