"""Image benchmarks.

speed:   training throughput (images/s) and peak memory of the ddpm-cifar10 U-Net against diffusers'
         UNet2DModel with the equivalent configuration (google/ddpm-cifar10-32 layout), same batch and
         precision, each model in its own subprocess so peak RSS is its own. CPU always; CUDA if available.
quality: digits-FID and conditional accuracy of a trained digits checkpoint for several samplers and
         guidance scales (--checkpoint RUN_OR_CKPT).
img2img: SR3 / Palette checkpoints on held-out data (--sr RUN [--regression RUN], --inpaint RUN --uncond RUN,
         --colorize RUN): super-resolution PSNR / SSIM of one sample and of the mean of 8 against bicubic and a regression
         U-Net, consistency, digits accuracy; inpainting class consistency and digits-FID against replacement
         inpainting and RePaint on an unconditional model; colourfulness and PSNR against a grayscale copy;
         --photo-inpaint RUN: photo inpainting and uncropping, PSNR in the hole against a mean-colour fill, pictures.
guidance: classifier guidance by a noise-aware classifier run (--classifier, e.g. image_digits_classifier) beside
         classifier-free guidance on the same class-conditional digits model, same samplers and steps: digits-FID
         and conditional accuracy per scale, for the guided unconditional model (the model sees the null label), the
         guided conditional model, and CFG; the classifier's own accuracy on noised test digits.

    python benchmarks/image.py speed --batch 4 --steps 3
    python benchmarks/image.py quality --checkpoint runs/image_digits --n 300
    python benchmarks/image.py guidance --checkpoint runs/image_digits --classifier runs/image_digits_classifier
    python benchmarks/image.py img2img --sr runs/digits_sr3 --regression runs/digits_sr3_l2 --out sr_digits
Writes benchmarks/results/image_speed.json / image_quality.json / guidance_digits.json (and
docs/figures/guidance_digits.png) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def build(impl: str):
    import torch
    if impl == "diffsuite":
        from diffsuite.modalities.image.unet import build_unet, preset
        net = build_unet(preset("ddpm-cifar10"))
        return net, lambda x, t: net(x, t)
    from diffusers import UNet2DModel
    net = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                      block_out_channels=(128, 256, 256, 256), dropout=0.1, norm_num_groups=32,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                      attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1)
    return net, lambda x, t: net(x, t).sample


def measure(impl: str, device: str, batch: int, steps: int, dtype: str, compile_: bool) -> dict:
    """Time `steps` optimizer steps of the eps-MSE loss after one warm-up step; peak memory of this process."""
    import torch
    torch.manual_seed(0)
    net, fwd = build(impl)
    net.to(device).train()
    n_params = sum(p.numel() for p in net.parameters())
    if compile_:
        fwd = torch.compile(fwd)
    opt = torch.optim.Adam(net.parameters(), 2e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    amp = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step():
        with amp:
            loss = (fwd(x, t).float() - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"impl": impl, "device": device, "dtype": dtype, "compile": compile_, "batch": batch, "steps": steps,
            "params": n_params, "images_per_s": batch * steps / dt, "peak_mem_mb": peak / 2 ** 20,
            "peak_mem_kind": "cuda max_memory_allocated" if device.startswith("cuda") else "process peak RSS"}


def speed_ratios(rows) -> dict:
    """Per (device, dtype, compile): our images/s over diffusers' in the same repeat, and their median."""
    out = {}
    for r in rows:
        if r["impl"] != "diffsuite" or "error" in r:
            continue
        ref = [q for q in rows if q["impl"] == "diffusers" and "error" not in q and q["repeat"] == r["repeat"]
               and (q["device"], q["dtype"], q["compile"]) == (r["device"], r["dtype"], r["compile"])]
        if ref:
            out.setdefault(f"{r['device']} {r['dtype']} compile={r['compile']}", []).append(
                r["images_per_s"] / ref[0]["images_per_s"])
    return {k: {"n": len(v), "median": statistics.median(v), "each": [round(x, 3) for x in v]} for k, v in out.items()}


def speed(args) -> list[dict]:
    import torch
    configs = [("cpu", "fp32", False)]
    if torch.cuda.is_available():
        configs += [("cuda", d, c) for d in ("fp32", "bf16") for c in (False, True)]
    rows = []
    for device, dtype, comp in configs:
        for rep in range(args.repeats):  # alternate the order so drift on a shared machine hits both alike
            for impl in ("diffsuite", "diffusers")[::1 if rep % 2 == 0 else -1]:
                cmd = [sys.executable, __file__, "_one", impl, device,
                       str(args.batch if device == "cpu" else args.gpu_batch), str(args.steps), dtype, str(int(comp))]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    rows.append({"impl": impl, "device": device, "dtype": dtype, "compile": comp, "repeat": rep,
                                 "error": out.stderr.strip().splitlines()[-1:]})
                    continue
                rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "repeat": rep})
    print(f"{'impl':10s} {'device':6s} {'dtype':5s} {'compile':7s} {'batch':5s} {'params':>10s} {'img/s':>8s} {'peak MB':>9s}")
    for r in rows:
        if "error" in r:
            print(f"{r['impl']:10s} {r['device']:6s} {r['dtype']:5s} {str(r['compile']):7s} error: {r['error']}")
            continue
        print(f"{r['impl']:10s} {r['device']:6s} {r['dtype']:5s} {str(r['compile']):7s} {r['batch']:5d} "
              f"{r['params']:10d} {r['images_per_s']:8.2f} {r['peak_mem_mb']:9.0f}")
    ratios = speed_ratios(rows)
    for k, v in ratios.items():
        print(f"{k}: diffsuite / diffusers images/s, median of {v['n']} = {v['median']:.3f} (each: {v['each']})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "image_speed.json").write_text(json.dumps({"args": vars(args), "rows": rows, "ratios": ratios},
                                                         indent=1))
    return rows


def real_floor(loaded, n: int, draws: int = 3) -> list[float]:
    """digits-FID of `draws` random sets of n real training images against the test split: the spread a perfect
    sampler would show at this n."""
    import torch
    from diffsuite.modalities.image import metrics
    r, task = loaded.recipe, loaded.task
    test, train = task.build_dataset(r.data, "test"), task.build_dataset(r.data, "train")
    clf, _ = metrics.digits_classifier(r.data.image_size, r.data.digits_mode)
    idx = [torch.randperm(len(train.x), generator=torch.Generator().manual_seed(s))[:n] for s in range(draws)]
    return [float(metrics.fid(clf.features, test.x, train.x[i])) for i in idx]


def quality(args) -> list[dict]:
    import torch
    from diffsuite.modalities.image.cli import evaluate
    from diffsuite.recipes.run import load
    torch.set_num_threads(args.threads)
    loaded = load(args.checkpoint)
    floor = real_floor(loaded, args.n) if loaded.recipe.data.source == "digits" else None
    print(f"real training images vs test, {args.n} per set: digits-FID {floor}", flush=True)
    _sampling_x0(loaded, "clip" if args.clip else None)
    grid = [("ddpm", 1000), ("ddim", 50), ("ddim", 20), ("ddim", 10), ("dpmpp_2m", 20), ("dpmpp_2m", 10),
            ("dpmpp_2m_sde", 20), ("dpmpp_2m_sde", 10)]
    grid = [g for g in grid if f"{g[0]}{g[1]}" not in args.skip and (not args.only or f"{g[0]}{g[1]}" in args.only)]
    out = RESULTS / "image_quality.json"
    earlier = json.loads(out.read_text()) if args.only and out.exists() else {}
    if earlier and earlier["checkpoint"] != str(loaded.checkpoint):
        raise SystemExit(f"--only: {out} holds rows of {earlier['checkpoint']}, not {loaded.checkpoint}")
    keep = earlier.get("rows", [])  # --only adds its rows to those of the earlier run on the same checkpoint
    rows = [r for r in keep if (r["sampler"], r["steps"]) not in grid]
    for sampler, steps in grid:
        for w in args.guidance:
            r = evaluate(loaded, args.n, sampler, steps, w, seed=0, bpd_n=0)
            rows.append(r)
            print(f"{sampler:9s} {steps:5d} w={w:<4} digits-FID {r['digits_fid']:8.3f}  "
                  f"cond-acc {r.get('conditional_accuracy', float('nan')):.3f}  ({r['sample_seconds']} s)", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": str(loaded.checkpoint), "args": vars(args), "step": loaded.step,
                               "real_floor_digits_fid": floor, "rows": rows}, indent=1))
    return rows


GUIDANCE_METHODS = {  # name: (what the diffusion model sees, how the row is guided)
    "cfg": "classifier-free guidance at w (w = 0: the conditional model)",
    "cg_uncond": "classifier guidance at s of the model under its null label (s = 0: the unconditional model)",
    "cg_cond": "classifier guidance at s of the conditional model (w = 0)",
    "cg_unconditional_model": "classifier guidance at s of a model trained without labels (s = 0: that model)",
}


def guidance(args) -> list[dict]:
    """Classifier guidance beside classifier-free guidance on one digits model (see the module docstring)."""
    import torch
    from diffsuite.core.classifier import accuracy as noisy_accuracy
    from diffsuite.modalities.image.cli import evaluate
    from diffsuite.recipes.run import load, load_classifier
    torch.set_num_threads(args.threads)
    loaded = load(args.checkpoint)
    clf = load_classifier(args.classifier, for_model=loaded)
    floor = real_floor(loaded, args.n)
    test = loaded.task.build_dataset(loaded.recipe.data, "test")
    clf_acc = {t: noisy_accuracy(clf, test.x, _digit_labels(loaded), t, torch.Generator().manual_seed(0))
               for t in (0, 250, 500, 750, 900, 999)}
    print(f"real training images vs test, {args.n} per set: digits-FID {floor}; noise-aware classifier accuracy on "
          f"noised test digits by t: {clf_acc}", flush=True)
    rows = []
    labelled = bool(loaded.recipe.model.num_classes)
    plan = (("cfg", args.w), ("cg_uncond", args.s), ("cg_cond", args.s_cond)) if labelled else \
        (("cg_unconditional_model", args.s),)
    for spec in args.grid:
        sampler, steps = spec.split(":")
        for method, scales in plan:
            for v in scales:
                kw = {"guidance": v} if method == "cfg" else {
                    "guidance": 0.0, "classifier": clf, "classifier_scale": v, "unconditional": method == "cg_uncond"}
                r = evaluate(loaded, args.n, sampler, int(steps), seed=0, bpd_n=0, **kw)
                r.update(method=method, scale=v, model_evals_per_step=2 if method == "cfg" and v else 1,
                         classifier_grads_per_step=0 if method == "cfg" else int(v != 0))
                rows.append(r)
                print(f"{sampler:9s} {steps:>4s} {method:9s} {v:<5} digits-FID {r['digits_fid']:8.3f}  cond-acc "
                      f"{r['conditional_accuracy']:.3f}  ({r['sample_seconds']} s)", flush=True)
    out = RESULTS / f"guidance_{args.out}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    res = {"checkpoint": str(loaded.checkpoint), "classifier": str(args.classifier),
           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "methods": GUIDANCE_METHODS, "real_floor_digits_fid": floor, "classifier_accuracy_by_t": clf_acc,
           "rows": rows, "figure": str(plot_guidance(rows, floor, args.figure))}
    out.write_text(json.dumps(res, indent=1))
    print(f"written {out}")
    return rows


def plot_guidance(rows: list[dict], floor: list[float], path: Path) -> Path:
    """digits-FID against conditional accuracy, one curve per method and sampler, each point labelled by its scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (method, sampler, steps) in dict.fromkeys((r["method"], r["sampler"], r["steps"]) for r in rows):
        pts = [r for r in rows if (r["method"], r["sampler"], r["steps"]) == (method, sampler, steps)]
        line, = ax.plot([r["conditional_accuracy"] for r in pts], [r["digits_fid"] for r in pts], "o-",
                        label=f"{method} ({sampler} {steps})")
        for r in pts:
            ax.annotate(f"{r['scale']:g}", (r["conditional_accuracy"], r["digits_fid"]), fontsize=7,
                        color=line.get_color(), xytext=(3, 3), textcoords="offset points")
    ax.axhline(min(floor), color="gray", ls=":", label="real training digits vs test")
    ax.set_xlabel("conditional accuracy (digits CNN)")
    ax.set_ylabel("digits-FID vs test split")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("classifier guidance (s) vs classifier-free guidance (w)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _draws(den, x_shape, cond, sampler: str, steps: int, k: int, seed: int = 0, hooks=()) -> "torch.Tensor":
    """k independent sample sets (k, N, ...) of a conditional denoiser (each set one batch)."""
    import torch
    from diffsuite.core.samplers import sample
    return torch.stack([sample(den, x_shape, sampler, steps, generator=torch.Generator().manual_seed(seed + j),
                               cond=cond, hooks=hooks) for j in range(k)])


def _self_ensemble(loaded, x_shape, src, steps: int, k: int) -> "torch.Tensor":
    """k finished sample sets (k, N, ...) of an SR model, set j drawn with the source under the (j % 8)-th symmetry of
    the square and turned back (EDSR's self-ensemble, Lim et al. 2017); set j's noise seed is _draws' (seed j)."""
    import torch
    from diffsuite.modalities.image.data import square_symmetry
    sets = []
    for j in range(k):
        s = square_symmetry(src, j % 8)
        cond = {"source": s}
        y = _draws(loaded.denoiser, (*x_shape[:2], *s.shape[2:]), cond, "ddim", steps, 1, seed=j)[0]
        sets.append(square_symmetry(loaded.task.finish(y, cond, loaded.recipe), j % 8, inverse=True))
    return torch.stack(sets)


def _scores(y, ref, extra=None, per_tile: bool = False) -> dict:
    from diffsuite.modalities.image import metrics
    psnr = metrics.psnr(y, ref)
    r = {"psnr": float(psnr.mean()), "ssim": float(metrics.ssim(y, ref).mean()), **(extra or {})}
    return {**r, "psnr_per_tile": [round(float(v), 3) for v in psnr]} if per_tile else r


def _digit_labels(loaded):
    from dataclasses import replace
    d = loaded.recipe.data
    return loaded.task._images(replace(d, class_cond=True), "test").labels if d.source == "digits" else None


def sr_rows(args, out: Path) -> dict:
    """Super-resolution on the test split: bicubic, SR3 (one sample, mean of k), a regression U-Net (see docstring)."""
    import time
    from diffsuite.core.degrade import consistency_error, downsample, project_consistent, upsample
    from diffsuite.modalities.image import metrics
    from diffsuite.recipes.run import load
    loaded = _sampling_x0(load(args.sr), args.clip_x0)
    d, f = loaded.recipe.data, loaded.recipe.data.factor
    x = loaded.task._images(d, args.split).x[:args.n]
    low = downsample(x, f)
    src = upsample(low, f)
    steps = args.steps or loaded.recipe.sample.steps
    t0 = time.time()
    ys = loaded.task.finish(_draws(loaded.denoiser, x.shape, {"source": src}, "ddim", steps, args.samples),
                            {"source": src}, loaded.recipe)
    seconds = time.time() - t0
    outs = {"bicubic": src, "sr3, one sample": ys[0], f"sr3, mean of {args.samples}": ys.mean(0)}
    if args.self_ensemble:
        outs[f"sr3, mean of {args.samples} over the symmetries"] = _self_ensemble(loaded, x.shape, src, steps,
                                                                                   args.samples).mean(0)
    if args.regression:
        reg = load(args.regression)
        outs["regression U-Net (L2)"] = reg.task.finish(_draws(reg.denoiser, x.shape, {"source": src}, "ddim", 1, 1)[0],
                                                        {"source": src}, reg.recipe)  # (a residual one adds its source)
    if args.project:  # every row but the single sample
        outs |= {f"{k}, projected": project_consistent(y, low, f) for k, y in outs.items() if k != "sr3, one sample"}
    labels = _digit_labels(loaded)
    clf = metrics.digits_classifier(d.image_size, d.digits_mode)[0] if labels is not None else None
    rows = []
    for name, y in outs.items():  # PSNR is the mean over tiles; psnr_pooled, that of the mean squared error
        extra = {"consistency_rms": float(consistency_error(y, low, f).mean()),
                 "psnr_pooled": metrics.psnr_pooled(y, x)}
        if clf is not None:
            extra["digits_accuracy"] = metrics.accuracy(clf, y, labels[:len(y)])
        rows.append({"method": name, **_scores(y, x, extra, per_tile=True)})
        print(f"SR {name:28s} " + "  ".join(f"{k} {v:.4f}" for k, v in rows[-1].items()
                                            if k not in ("method", "psnr_per_tile")), flush=True)
    res = {"checkpoint": str(loaded.checkpoint), "regression": args.regression, "split": args.split, "n": len(x), "factor": f,
           "sampler": "ddim", "steps": steps, "samples": args.samples, "sr3_seconds": round(seconds, 1), "rows": rows}
    if clf is not None:
        res["digits_accuracy_clean"] = metrics.accuracy(clf, x, labels[:len(x)])
    res["picture"] = str(_picture([src[:8], ys[0, :8], ys.mean(0)[:8], x[:8]], out.with_suffix(".png")))
    return res


def inpaint_rows(args, out: Path) -> dict:
    """Palette against replacement inpainting and RePaint on an unconditional model, digits, two masks (docstring)."""
    import math
    import time
    import torch
    from diffsuite.core.degrade import box_mask, free_form_mask, inpaint_source
    from diffsuite.core.guidance import Inpaint, repaint, repaint_positions
    from diffsuite.modalities.image import metrics
    from diffsuite.modalities.image.edit import preset_mask
    from diffsuite.recipes.run import load
    pal, unc = load(args.inpaint), load(args.uncond)
    d = pal.recipe.data
    test = pal.task._images(d, "test")
    labels = _digit_labels(pal)
    reps = math.ceil(args.n / len(test.x))
    x, y = test.x.repeat(reps, 1, 1, 1)[:args.n], labels.repeat(reps)[:args.n]
    clf = metrics.digits_classifier(d.image_size, d.digits_mode)[0]
    g = torch.Generator().manual_seed(0)
    size = x.shape[-2:]
    masks = {"left-half": preset_mask("left-half", size[0]).expand(len(x), 1, *size),
             "random": torch.stack([(box_mask if i % 2 else free_form_mask)(tuple(size), g) for i in range(len(x))])}
    # RePaint's resampling at about 10x Palette's evaluations: 20 steps, jumps of 5, the repeats that come closest
    r_steps, jl = 20, 5
    nfe_of = lambda j: sum(b > a for a, b in zip(repaint_positions(r_steps, jl, j)[:-1],  # noqa: E731
                                                 repaint_positions(r_steps, jl, j)[1:]))
    jn = min(range(1, 11), key=lambda j: abs(nfe_of(j) - 10 * args.palette_steps))
    nfe_rp = nfe_of(jn)
    res = {"palette": str(pal.checkpoint), "uncond": str(unc.checkpoint), "n": len(x), "rows": [],
           "repaint": {"steps": r_steps, "jump_length": jl, "jump_n_sample": jn}}
    for mname, m in masks.items():
        known = x * m + 0 * (1 - m)
        paste = lambda z: m * x + (1 - m) * z  # noqa: E731
        runs = {f"Palette, DDIM {args.palette_steps}": (args.palette_steps, lambda: _draws(
                    pal.denoiser, x.shape, {"source": inpaint_source(x, m)}, "ddim", args.palette_steps, 1)[0]),
                f"Palette, DDIM {10 * args.palette_steps}": (10 * args.palette_steps, lambda: _draws(
                    pal.denoiser, x.shape, {"source": inpaint_source(x, m)}, "ddim", 10 * args.palette_steps, 1)[0]),
                f"replacement, DDPM {10 * args.palette_steps}": (10 * args.palette_steps, lambda: _draws(
                    unc.denoiser, x.shape, None, "ddpm", 10 * args.palette_steps, 1,
                    hooks=[Inpaint(unc.denoiser.schedule, m, x)])[0]),
                f"RePaint, {nfe_rp} evaluations": (nfe_rp, lambda: repaint(
                    unc.denoiser, torch.randn(x.shape, generator=g), r_steps, inpaint=Inpaint(unc.denoiser.schedule, m, x),
                    generator=g, jump_length=jl, jump_n_sample=jn))}
        floor = {"method": "the masked input (hole mid-gray)", "mask": mname, "nfe": 0,
                 "class_consistency": metrics.accuracy(clf, known, y), "digits_fid": metrics.fid(clf.features, test.x, known)}
        res["rows"].append(floor)
        pics = [known[:8]]
        for name, (nfe, fn) in runs.items():
            t0 = time.time()
            z = paste(fn())
            row = {"method": name, "mask": mname, "nfe": nfe, "seconds": round(time.time() - t0, 1),
                   "class_consistency": metrics.accuracy(clf, z, y), "digits_fid": metrics.fid(clf.features, test.x, z)}
            res["rows"].append(row)
            pics.append(z[:8])
            print(f"inpaint {mname:9s} {name:28s} class consistency {row['class_consistency']:.3f}  digits-FID "
                  f"{row['digits_fid']:.2f}  ({row['seconds']} s)", flush=True)
        res[f"picture_{mname}"] = str(_picture(pics + [x[:8]], out.with_name(f"{out.stem}_{mname}.png")))
    res["ceiling"] = {"class_consistency": metrics.accuracy(clf, x, y), "digits_fid_real_floor": real_floor(pal, len(x))}
    return res


def colorize_rows(args, out: Path) -> dict:
    """Colourfulness and PSNR of colorized test patches against the originals and a grayscale copy."""
    import numpy as np
    from diffsuite.core.degrade import to_grayscale
    from diffsuite.modalities.image import metrics
    from diffsuite.recipes.run import load
    loaded = _sampling_x0(load(args.colorize), args.clip_x0)
    x = loaded.task.build_dataset(loaded.recipe.data, "test").x[:args.n]
    gray = to_grayscale(x)
    ys = _draws(loaded.denoiser, x.shape, {"source": gray}, "ddim", args.steps or loaded.recipe.sample.steps,
                args.samples)
    outs = {"grayscale copy": gray.expand(-1, 3, -1, -1), "Palette, one sample": ys[0],
            f"Palette, mean of {args.samples}": ys.mean(0), "original": x}
    rows = [{"method": k, "psnr": float(metrics.psnr(v, x).mean()) if k != "original" else None,
             "colourfulness": float(np.mean(metrics.colourfulness(v)))} for k, v in outs.items()]
    for r in rows:
        print(f"colorize {r['method']:24s} PSNR {r['psnr']}  colourfulness {r['colourfulness']:.2f}", flush=True)
    return {"checkpoint": str(loaded.checkpoint), "n": len(x), "rows": rows,
            "picture": str(_picture([gray.expand(-1, 3, -1, -1)[:8], ys[0, :8], x[:8]], out.with_suffix(".png")))}


def photo_restore_rows(args, out: Path) -> dict:
    """Palette inpainting and uncropping of held-out photo tiles (--split): per mask kind (random boxes, free-form
    strokes, the right half for uncropping), PSNR / SSIM over the whole tile and PSNR inside the hole of one sample and
    of the mean of --samples, beside two floors that fill the hole from the known pixels, with their mean colour and
    smoothly (push-pull, where a residual model starts); a picture per mask kind (masked input / one sample / another
    sample / original)."""
    import torch
    from diffsuite.core.degrade import border_mask, box_mask, free_form_mask, inpaint_source, masked, push_pull_fill
    from diffsuite.recipes.run import load
    loaded = _sampling_x0(load(args.photo_inpaint), args.clip_x0)
    x = loaded.task.build_dataset(loaded.recipe.data, args.split).x[:args.n]
    g, size = torch.Generator().manual_seed(0), tuple(x.shape[-2:])
    masks = {"box": torch.stack([box_mask(size, g) for _ in x]),
             "free-form": torch.stack([free_form_mask(size, g) for _ in x]),
             "uncrop right half": border_mask(size, "right", 0.5).expand(len(x), 1, *size)}
    steps = args.steps or loaded.recipe.sample.steps
    res = {"checkpoint": str(loaded.checkpoint), "split": args.split, "n": len(x), "sampler": "ddim", "steps": steps,
           "samples": args.samples, "rows": []}

    def hole_psnr(y, m):  # PSNR over the hidden pixels only (images in [-1, 1])
        se = ((y - x) ** 2 * (1 - m)).flatten(1).sum(1) / ((1 - m).expand_as(x).flatten(1).sum(1)).clamp(min=1)
        return float((10 * torch.log10(4 / se.clamp(min=1e-10))).mean())

    for name, m in masks.items():
        src = inpaint_source(x, m)
        ys = loaded.task.finish(_draws(loaded.denoiser, x.shape, {"source": src}, "ddim", steps, args.samples),
                                {"source": src}, loaded.recipe)  # (a residual model adds its base)
        ys = m * x + (1 - m) * ys  # the known pixels are the input's
        fill = (x * m).flatten(2).sum(2) / m.flatten(2).sum(2).clamp(min=1)  # (N, C): the known pixels' mean colour
        outs = {"hole filled with the known mean colour": m * x + (1 - m) * fill[..., None, None],
                "hole filled smoothly (push-pull)": push_pull_fill(x, m),
                "Palette, one sample": ys[0], f"Palette, mean of {args.samples}": ys.mean(0)}
        for method, y in outs.items():
            res["rows"].append({"mask": name, "method": method, **_scores(y, x, {"hole_psnr": hole_psnr(y, m)})})
            r = res["rows"][-1]
            print(f"photo {name:18s} {method:40s} PSNR {r['psnr']:.2f}  hole PSNR {r['hole_psnr']:.2f}  SSIM "
                  f"{r['ssim']:.3f}", flush=True)
        res[f"picture_{name.split()[0]}"] = str(_picture([masked(x, m, -1.0)[:8], ys[0, :8], ys[1 % len(ys), :8], x[:8]],
                                                         out.with_name(f"{out.stem}_{name.split()[0]}.png")))
    return res


def _sampling_x0(loaded, clip_x0: str | None):
    """The checkpoint sampled with another diffusion.clip_x0 (none, clip, dynamic) than its recipe's, where one is
    given: a sampling-time transform of the x0 estimate, so the trained weights are the same either way."""
    if clip_x0:
        from diffsuite.core.build import X0_TRANSFORMS
        loaded.denoiser.x0_transform = X0_TRANSFORMS[clip_x0]
        loaded.recipe.diffusion.clip_x0 = clip_x0
    return loaded


def _picture(rows: list, path: Path) -> Path:
    """A PNG grid: one row per list entry (e.g. input / samples / target), 8 images each."""
    import torch
    from diffsuite.modalities.image.task import save_grid
    n = min(len(r) for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_grid(torch.cat([r[:n] for r in rows]), path, n, scale=max(1, 64 // rows[0].shape[-1]))


def img2img(args) -> dict:
    """The image-to-image benchmarks of the checkpoints given (see the module docstring); JSON in results/."""
    import torch
    torch.set_num_threads(args.threads)
    out = RESULTS / f"img2img_{args.out}.json"
    res = {"args": {k: v for k, v in vars(args).items()}}
    if args.sr:
        res["sr"] = sr_rows(args, out.with_name(f"img2img_{args.out}_sr"))
    if args.inpaint:
        res["inpaint"] = inpaint_rows(args, out.with_name(f"img2img_{args.out}_inpaint"))
    if args.colorize:
        res["colorize"] = colorize_rows(args, out.with_name(f"img2img_{args.out}_colorize"))
    if args.photo_inpaint:
        res["photo_inpaint"] = photo_restore_rows(args, out.with_name(f"img2img_{args.out}"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"written {out}")
    return res


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_one":
        import torch
        torch.set_num_threads(int(__import__("os").environ.get("BENCH_THREADS", "1")))
        impl, device, batch, steps, dtype, comp = sys.argv[2:8]
        print(json.dumps(measure(impl, device, int(batch), int(steps), dtype, bool(int(comp)))))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--gpu-batch", type=int, default=128)
    s.add_argument("--steps", type=int, default=3)
    s.add_argument("--repeats", type=int, default=3, help="paired runs per configuration, order alternated")
    q = sub.add_parser("quality")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--n", type=int, default=300)
    q.add_argument("--guidance", type=float, nargs="*", default=[0.0, 1.0, 3.0])
    q.add_argument("--skip", nargs="*", default=[], help="e.g. ddpm1000")
    q.add_argument("--only", nargs="*", default=[], help="run only these rows (e.g. dpmpp_2m_sde10) and keep the "
                   "other rows of an earlier image_quality.json")
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--clip", action="store_true", help="clip x0 to [-1, 1] (overrides the checkpoint's clip_x0)")
    gd = sub.add_parser("guidance")
    gd.add_argument("--checkpoint", required=True, help="a class-conditional digits model with a null label")
    gd.add_argument("--classifier", required=True, help="its noise-aware classifier run")
    gd.add_argument("--n", type=int, default=1000)
    gd.add_argument("--grid", nargs="+", default=["ddim:25"], help="sampler:steps")
    gd.add_argument("--w", type=float, nargs="*", default=[0.0, 0.5, 1.0, 2.0, 4.0])
    gd.add_argument("--s", type=float, nargs="*", default=[0.0, 1.0, 2.0, 4.0, 8.0, 16.0])
    gd.add_argument("--s-cond", type=float, nargs="*", default=[1.0, 4.0])
    gd.add_argument("--threads", type=int, default=1)
    gd.add_argument("--figure", type=Path, default=RESULTS.parent.parent / "docs" / "figures" / "guidance_digits.png")
    gd.add_argument("--out", default="digits", help="results/guidance_<out>.json")
    ii = sub.add_parser("img2img")
    ii.add_argument("--sr", help="an SR3 run (data.degradation=sr)")
    ii.add_argument("--regression", help="the regression U-Net of the same size (see docs/image.md)")
    ii.add_argument("--inpaint", help="a Palette inpainting run on digits")
    ii.add_argument("--uncond", help="an unconditional digits run for replacement inpainting and RePaint")
    ii.add_argument("--colorize", help="a Palette colorization run")
    ii.add_argument("--photo-inpaint", help="a Palette inpainting run on photo patches (image_photos_inpaint): boxes, "
                    "free-form strokes and uncropping the right half, with pictures")
    ii.add_argument("--n", type=int, default=1077, help="test images (inpainting: repeated to reach n)")
    ii.add_argument("--samples", type=int, default=8)
    ii.add_argument("--self-ensemble", action="store_true", help="SR: also the mean of the samples drawn under the 8 "
                    "symmetries of the square (EDSR's self-ensemble)")
    ii.add_argument("--project", action="store_true", help="SR: also each row but the single sample projected onto the "
                    "outputs consistent with the input (core.degrade.project_consistent)")
    ii.add_argument("--steps", type=int, default=None, help="SR3 / colorization DDIM steps (default the recipe's)")
    ii.add_argument("--palette-steps", type=int, default=10)
    ii.add_argument("--split", default="test", choices=("val", "test"),
                    help="super-resolution and photo inpainting: the split scored")
    ii.add_argument("--threads", type=int, default=1)
    ii.add_argument("--clip-x0", default=None, choices=("none", "clip", "dynamic"), help="sample SR3, colorization and "
                    "photo-inpainting runs with this x0 transform instead of their recipe's diffusion.clip_x0")
    ii.add_argument("--out", default="digits", help="results/img2img_<out>.json")
    args = p.parse_args(argv)
    {"speed": speed, "quality": quality, "guidance": guidance, "img2img": img2img}[args.what](args)


if __name__ == "__main__":
    main()
