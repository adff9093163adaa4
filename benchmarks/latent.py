"""Latent diffusion against pixel diffusion on digits (Rombach et al. 2022's trade, measured here).

Trains, one after the other in this process (so CPU time is measured alike): the digits autoencoder
(`image_digits_autoencoder`, f = 2), the latent model on its latents (`image_digits_latent`) and the pixel model
(`image_digits`), each skipped when its run folder under --work already holds a finished run (its CPU time is then read
from the timing file written beside it). Then, per model and sampling seed: --n samples with the recipe's sampler,
digits-FID against the test digits and conditional accuracy (the digits CNN of benchmarks/image.py), and the CPU seconds
of sampling. The autoencoder: reconstruction PSNR on the test digits and the digits-FID of the reconstructions.
Floors beside them: real training digits against the test digits (a perfect model), and the untrained latent model.

Target (issue 28): latent digits-FID and conditional accuracy within 10% of the pixel model's, with at least 2x less
CPU time for training plus sampling 1000 images (the autoencoder's training reported separately).

    python benchmarks/latent.py --work runs/latent_bench [--n 1000] [--seeds 0 1 2] [--kl 1e-6]
    python benchmarks/latent.py --work runs/latent_bench --kl 1e-4 --seeds 0 --out kl1e-4     # the KL sweep, then
    python benchmarks/latent.py --sweep benchmarks/results/latent_digits.json benchmarks/results/latent_digits_kl*.json
    python benchmarks/latent.py --photos runs/photos_ae runs/photos_latent
    python benchmarks/latent.py --music --work runs/latent_music       # latent against pixel music_bach
    python benchmarks/latent.py --work runs/latent_bench --latent-steps 2200 --select-guidance 0 0.5 1 2  # on val
    python benchmarks/latent.py --work runs/latent_b --latent-steps 1150 --latent-batch 64 --w-pixel 0 --w-latent 0 --out batch64

Writes benchmarks/results/latent_digits.json (or latent_digits_<out>.json with --out).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffsuite.core.precision import cpu_name

RESULTS = Path(__file__).resolve().parent / "results"


def timed_train(recipe: str, out: Path, overrides: list[str], cmd: str = "train") -> float:
    """CPU seconds (process time: user + system, this process's threads) of training `recipe` into `out`, or the
    seconds recorded when it was trained earlier."""
    from diffsuite.recipes import run
    stamp = out.parent / f"{out.name}.cpu.json"
    if stamp.is_file() and (out / "checkpoints" / "latest.json").is_file():
        return json.loads(stamp.read_text())["cpu_seconds"]
    t0, w0 = time.process_time(), time.perf_counter()
    run.train(recipe, overrides + ["train.progress=false"], out_dir=out, overwrite=True)
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    stamp.write_text(json.dumps({"recipe": recipe, "overrides": overrides, "cpu_seconds": cpu, "wall_seconds": wall}))
    return cpu


def sample_rows(loaded, name: str, n: int, seeds: list[int], guidance: float | None = None,
                split: str = "test") -> list[dict]:
    from diffsuite.modalities.image.cli import evaluate
    rows = []
    for s in seeds:
        t0 = time.process_time()
        r = evaluate(loaded, n, guidance=guidance, seed=s, bpd_n=0, split=split)
        r.update(model=name, sample_cpu_seconds=time.process_time() - t0)
        rows.append(r)
        print(f"{name:22s} seed {s} w {r['guidance']:g} ({split}): digits-FID {r['digits_fid']:7.2f}  "
              f"cond-acc {r['conditional_accuracy']:.3f}  sampling {r['sample_cpu_seconds']:.1f} CPU s", flush=True)
    return rows


def autoencoder_rows(ae, test_x: torch.Tensor) -> dict:
    from diffsuite.modalities.image import metrics
    with torch.no_grad():
        rec = ae.decode(ae.posterior_sample(test_x, sample=False)).clamp(-1, 1)
    clf, _ = metrics.digits_classifier(test_x.shape[-1])
    return {"reconstruction_psnr": float(metrics.psnr(rec, test_x).mean()),
            "reconstruction_digits_fid": metrics.fid(clf.features, test_x, rec), "scale": float(ae.scale),
            "latent_shape": [ae.latent_channels, test_x.shape[-1] // ae.factor, test_x.shape[-1] // ae.factor]}


def select_guidance(models: dict, weights: list[float], n: int, seed: int = 100, margin: float = 0.5) -> dict:
    """The rule of docs/image.md#latent-diffusion, fixed before it ran: per model, each w ranked by digits-FID of n
    samples against the validation digits; the lowest wins unless it beats w = 1 (the recipes') by less than
    `margin`."""
    out = {}
    for name, loaded in models.items():
        rows = []
        for w in weights:
            rows += sample_rows(loaded, name, n, [seed], w, "val")
        best = min(rows, key=lambda r: r["digits_fid"])
        base = [r for r in rows if r["guidance"] == 1.0]
        chosen = base[0] if base and base[0]["digits_fid"] - best["digits_fid"] < margin else best
        out[name] = {"rows": rows, "chosen_w": chosen["guidance"]}
        print(f"{name}: chosen w = {chosen['guidance']:g} (val digits-FID {chosen['digits_fid']:.2f})", flush=True)
    return out


def mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def kl_sweep(paths: list[Path], figure: Path) -> list[dict]:
    """The KL-weight sweep from earlier runs' JSON: reconstruction against sample quality, a table and a plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = []
    for p in paths:
        r = json.loads(p.read_text())
        kl = r["args"]["kl"] if r["args"]["kl"] is not None else 1e-6
        lt = [x for x in r["rows"] if x["model"] == "latent" and x["seed"] == r["args"]["seeds"][0]][0]
        rows.append({"kl_weight": kl, "reconstruction_psnr": r["autoencoder"]["reconstruction_psnr"],
                     "reconstruction_digits_fid": r["autoencoder"]["reconstruction_digits_fid"],
                     "scale": r["autoencoder"]["scale"], "sample_digits_fid": lt["digits_fid"],
                     "conditional_accuracy": lt["conditional_accuracy"], "seed": lt["seed"], "json": p.name})
    rows.sort(key=lambda x: x["kl_weight"])
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot([x["reconstruction_psnr"] for x in rows], [x["sample_digits_fid"] for x in rows], "o-")
    for x in rows:
        ax.annotate(f"kl {x['kl_weight']:g}", (x["reconstruction_psnr"], x["sample_digits_fid"]),
                    textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("autoencoder reconstruction PSNR (dB, test digits)")
    ax.set_ylabel("latent model digits-FID (1000 samples)")
    ax.set_title("KL weight: reconstruction against sample quality")
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)
    for x in rows:
        print(f"kl {x['kl_weight']:8g}  recon PSNR {x['reconstruction_psnr']:6.2f}  recon FID "
              f"{x['reconstruction_digits_fid']:7.2f}  scale {x['scale']:.3f}  sample FID {x['sample_digits_fid']:7.2f}  "
              f"acc {x['conditional_accuracy']:.3f}")
    return rows


def photos(ae_run: str, latent_run: str | None, n: int = 16) -> dict:
    """Photo patches: the autoencoder's reconstruction PSNR / SSIM on the held-out photographs' tiles (bicubic
    4x down-and-up beside it, as a reference for what f = 4 costs), and a grid of decoded latent-model samples."""
    from diffsuite.modalities.image import metrics
    from diffsuite.modalities.image.task import save_grid
    from diffsuite.core.degrade import sr_source
    from diffsuite.recipes import run
    ae = run.load_autoencoder(ae_run)
    x = run.get_task("image").build_dataset(ae.recipe.data, "test").x
    with torch.no_grad():
        rec = torch.cat([ae.decode(ae.posterior_sample(x[i:i + 32], sample=False)) for i in range(0, len(x), 32)])
    rec = rec.clamp(-1, 1)
    bic = sr_source(x, ae.factor).clamp(-1, 1)
    res = {"autoencoder": str(ae.checkpoint), "test_tiles": len(x), "scale": float(ae.scale),
           "reconstruction_psnr": float(metrics.psnr(rec, x).mean()), "reconstruction_ssim": float(metrics.ssim(rec, x).mean()),
           f"bicubic_{ae.factor}x_psnr": float(metrics.psnr(bic, x).mean())}
    figs = RESULTS.parent.parent / "docs" / "figures"
    save_grid(torch.cat([x[:8], rec[:8]]), figs / "latent_photos_reconstruction.png", 8, scale=2)
    if latent_run:
        loaded = run.load(latent_run)
        xs, _ = run.generate(loaded.denoiser, loaded.task, loaded.recipe, n=n, progress=False)
        save_grid(xs, figs / "latent_photos_samples.png", 8, scale=2)
        res.update(latent=str(loaded.checkpoint), samples=n)
    print(json.dumps(res, indent=1))
    (RESULTS / "latent_photos.json").write_text(json.dumps(res, indent=1))
    return res


def music(work: Path, n: int, seed: int) -> dict:
    """Latent against pixel `music_bach` (the same roll U-Net, chord conditioning, sampler and guidance): training
    and sampling CPU seconds, Yang & Lerch mean OA and chord accuracy on n held-out windows' chords (benchmarks/
    music.py), beside the training windows (ceiling) and the independent-notes baseline (floor); the autoencoder's
    note F1 on the held-out windows."""
    from music import evaluate, generate, references  # benchmarks/music.py
    from diffsuite.modalities.music import metrics
    from diffsuite.modalities.music.roll import from_model, to_model
    from diffsuite.recipes import run
    ae_dir, ld_dir, px_dir = work / "ae", work / "latent", work / "pixel"
    cpu = {"autoencoder": timed_train("music_bach_autoencoder", ae_dir, []),
           "latent": timed_train("music_bach_latent", ld_dir, [f"latent.autoencoder={ae_dir}"]),
           "pixel": timed_train("music_bach", px_dir, [])}
    latent, pixel = run.load(ld_dir), run.load(px_dir)
    data = pixel.recipe.data
    out, (test, train, conds, ref_stats) = references(data, n, seed)
    ae, x = latent.task.ae, to_model(test)
    with torch.no_grad():
        rec = from_model(torch.cat([ae.decode(ae.posterior_sample(x[i:i + 32], sample=False))
                                    for i in range(0, len(x), 32)]))
    out["autoencoder"] = {"note_f1": metrics.note_f1(list(rec), list(test)), "scale": float(ae.scale),
                          "note_f1_with_offsets": metrics.note_f1(list(rec), list(test), offsets=True),
                          "latent_shape": [ae.latent_channels] + [s // ae.factor for s in x.shape[2:]],
                          "train_cpu_seconds": cpu["autoencoder"]}
    for name, loaded in (("pixel", pixel), ("latent", latent)):
        t0 = time.process_time()
        rolls, _ = generate(loaded, conds, loaded.recipe.sample.guidance, None, seed)
        row = evaluate(name, rolls, test, train, data, ref_stats, out, conds)
        row.update(train_cpu_seconds=cpu[name], sample_cpu_seconds=time.process_time() - t0)
        print(f"{name:7s} mean OA {row['mean_OA']:.3f}  chord accuracy {row['chord_accuracy']:.3f}  train "
              f"{row['train_cpu_seconds']:.0f} CPU s  sampling {len(conds)} windows {row['sample_cpu_seconds']:.0f} "
              f"CPU s", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", nargs="+", type=Path, help="collect the KL sweep from these results JSON files (no "
                    "training): a table, results/latent_kl_sweep.json and docs/figures/latent_kl.png")
    ap.add_argument("--photos", nargs="+", metavar="RUN", help="photo patches: AE_RUN [LATENT_RUN] (reconstruction "
                    "on the test tiles and a sample grid; results/latent_photos.json, docs/figures/latent_photos_*.png)")
    ap.add_argument("--music", action="store_true", help="latent against pixel music_bach instead of digits "
                    "(--work holds ae/, latent/, pixel/; --n held-out windows, default 200; the first seed)")
    ap.add_argument("--work", help="folder for the three runs (reused when finished)")
    ap.add_argument("--n", type=int, default=None, help="samples per seed (default 1000 digits, 200 windows)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--kl", type=float, default=None, help="autoencoder.kl_weight (default the recipe's)")
    ap.add_argument("--steps", type=int, default=None, help="train.steps of all three runs (default the recipes'; a smoke test)")
    ap.add_argument("--latent-steps", type=int, default=None, help="train.steps of the latent model alone")
    ap.add_argument("--latent-batch", type=int, default=None, help="train.batch_size of the latent model alone")
    ap.add_argument("--select-guidance", type=float, nargs="+", metavar="W", help="rank these guidance weights on the "
                    "validation digits, per model (the rule in docs/image.md#latent-diffusion); writes "
                    "results/latent_digits_guidance_val.json and samples nothing on the test digits")
    ap.add_argument("--w-pixel", type=float, default=None, help="the pixel model's guidance (default the recipe's)")
    ap.add_argument("--w-latent", type=float, default=None, help="the latent model's guidance (default the recipe's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    suffix = f"_{args.out}" if args.out else ""
    if args.photos:
        photos(args.photos[0], args.photos[1] if len(args.photos) > 1 else None)
        return
    if args.sweep:
        rows = kl_sweep(args.sweep, RESULTS.parent.parent / "docs" / "figures" / "latent_kl.png")
        (RESULTS / "latent_kl_sweep.json").write_text(json.dumps(rows, indent=1))
        return
    if not args.work:
        ap.error("--work is required (or --sweep)")
    torch.set_num_threads(args.threads)
    machine = {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
               "torch": torch.__version__}
    if args.music:
        res = {"machine": machine, "args": vars(args), **music(Path(args.work), args.n or 200, args.seeds[0])}
        out = RESULTS / f"latent_music{suffix}.json"
        out.write_text(json.dumps(res, indent=1))
        print(f"written {out}")
        return
    args.n = args.n or 1000
    from diffsuite.recipes import run
    from image import real_floor  # benchmarks/image.py
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    kl = [] if args.kl is None else [f"autoencoder.kl_weight={args.kl}"]
    steps = [] if args.steps is None else [f"train.steps={args.steps}"]
    ls = [] if args.latent_steps is None else [f"train.steps={args.latent_steps}"]
    ls += [] if args.latent_batch is None else [f"train.batch_size={args.latent_batch}"]
    ae_dir, px_dir = work / f"ae{args.kl or ''}", work / "pixel"
    ld_dir = work / (f"latent{args.kl or ''}{'-s' + str(args.latent_steps) if args.latent_steps else ''}"
                     f"{'-b' + str(args.latent_batch) if args.latent_batch else ''}")
    cpu = {"autoencoder": timed_train("image_digits_autoencoder", ae_dir, kl + steps),
           "latent": timed_train("image_digits_latent", ld_dir, [f"latent.autoencoder={ae_dir}"] + steps + ls),
           "pixel": timed_train("image_digits", px_dir, steps)}
    latent, pixel = run.load(ld_dir), run.load(px_dir)
    if args.select_guidance:
        res = {"machine": machine, "args": vars(args), "split": "val",
               **select_guidance({"pixel": pixel, "latent": latent}, args.select_guidance, args.n)}
        (RESULTS / f"latent_digits_guidance_val{suffix}.json").write_text(json.dumps(res, indent=1))
        return
    test_x = pixel.task.build_dataset(pixel.recipe.data, "test").x
    res = {"machine": machine,
           "args": vars(args), "train_cpu_seconds": cpu,
           "real_floor_digits_fid": real_floor(pixel, args.n),
           "autoencoder": autoencoder_rows(latent.task.ae, test_x)}
    print(json.dumps(res["autoencoder"]), flush=True)
    rows = sample_rows(pixel, "pixel", args.n, args.seeds, args.w_pixel) + \
        sample_rows(latent, "latent", args.n, args.seeds, args.w_latent)
    torch.manual_seed(0)
    untrained = run.build_model(latent.task, latent.recipe, for_sampling=True).eval()
    floor = type(latent)(latent.task, latent.recipe, untrained, latent.checkpoint, 0, latent.precision)
    rows += sample_rows(floor, "untrained latent model", args.n, args.seeds[:1], args.w_latent)
    summary = {}
    for name in ("pixel", "latent"):
        rs = [r for r in rows if r["model"] == name]
        sample_cpu = mean(rs, "sample_cpu_seconds") * 1000 / args.n
        summary[name] = {"digits_fid": mean(rs, "digits_fid"), "conditional_accuracy": mean(rs, "conditional_accuracy"),
                         "train_cpu_seconds": cpu[name], "sample_1000_cpu_seconds": sample_cpu,
                         "train_plus_sample_1000_cpu_seconds": cpu[name] + sample_cpu}
    p, lt = summary["pixel"], summary["latent"]
    summary["latent_vs_pixel"] = {"digits_fid_ratio": lt["digits_fid"] / p["digits_fid"],
                                  "accuracy_ratio": lt["conditional_accuracy"] / p["conditional_accuracy"],
                                  "cpu_speedup": p["train_plus_sample_1000_cpu_seconds"] / lt["train_plus_sample_1000_cpu_seconds"]}
    res.update(rows=rows, summary=summary)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"latent_digits{suffix}.json"
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
