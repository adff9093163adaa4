"""Sampler quality and overhead with the exact Gaussian-mixture denoiser, side by side with diffusers.

For every sampler and NFE: sliced Wasserstein-2 (SW2) between the samples and a fresh draw from the true
mixture, and the mean NLL of the samples under the true density (the true samples' mean NLL is the reference).
Every sampler starts from the same x_T. Where diffusers imports, its DDPM / DDIM / DPMSolverMultistep
schedulers run on the same denoiser and noise, and ours use the very timesteps diffusers chose.
Per-step overhead: the sampler loop with a trivial denoiser (returns a precomputed zero eps) divided by steps.

    python benchmarks/samplers.py            # full run (a few minutes on 1 core)
    python benchmarks/samplers.py --quick    # smoke run
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from diffsuite.core.analytic import ExactGMMNet, diagonal_gmm, gmm_2d
from diffsuite.core.denoiser import Denoiser
from diffsuite.core.samplers import nfe, sample, timesteps_for
from diffsuite.core.schedules import make_schedule
from diffsuite.core.utils import atomic_write_json

try:  # optional reference implementation
    import diffusers
except ImportError:  # pragma: no cover
    diffusers = None

T = 1000
KW = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def sliced_w2(a: torch.Tensor, b: torch.Tensor, theta: torch.Tensor) -> float:
    """SW2 = sqrt(E_theta W2^2(theta.a, theta.b)), 1-D W2 from sorted projections (Rabin et al. 2011)."""
    pa, pb = (a.double() @ theta).sort(0).values, (b.double() @ theta).sort(0).values
    return math.sqrt(float(((pa - pb) ** 2).mean()))


def steps_for(sampler: str, n_fe: int) -> int:
    return (n_fe + 1) // 2 if sampler == "heun" else n_fe


# --- our samplers -------------------------------------------------------------------------------------------

def our_runs(n_fe):
    """(label, sampler, steps, options) for every sampler at this NFE; DDPM/DDIM/DPM++ on diffusers' timesteps."""
    ts_lead = timesteps_for(T, n_fe, "leading")
    runs = [("ddpm (beta_tilde)", "ddpm", n_fe, {"timesteps": ts_lead, "variance": "beta_tilde"}),
            ("ddpm (beta)", "ddpm", n_fe, {"timesteps": ts_lead, "variance": "beta"}),
            ("ddim eta=0", "ddim", n_fe, {"timesteps": ts_lead}),
            ("ddim eta=1", "ddim", n_fe, {"timesteps": ts_lead, "eta": 1.0}),
            ("dpmpp_2m", "dpmpp_2m", n_fe, {"timesteps": dpm_timesteps(n_fe)}),
            ("dpmpp_2m logsnr", "dpmpp_2m", n_fe, {"spacing": "logsnr"}),
            ("euler", "euler", n_fe, {}),
            ("heun", "heun", steps_for("heun", n_fe), {})]
    return runs


def dpm_timesteps(n):
    """diffusers' default DPMSolverMultistep spacing: linspace(0, T-1, n+1) rounded, reversed, last dropped."""
    import numpy as np
    return torch.as_tensor(np.linspace(0, T - 1, n + 1).round()[::-1][:-1].copy(), dtype=torch.float64)


def run_ours(den, x_T, name, steps, opts, seed):
    return sample(den, x_T.shape, name, steps, x_T=x_T.clone(), generator=torch.Generator().manual_seed(seed), **opts)


# --- diffusers ----------------------------------------------------------------------------------------------

def ref_schedulers():
    return {"diffusers DDPM": lambda: diffusers.DDPMScheduler(**KW, variance_type="fixed_small", clip_sample=False),
            "diffusers DDIM": lambda: diffusers.DDIMScheduler(**KW, clip_sample=False, set_alpha_to_one=True),
            "diffusers DPM++2M": lambda: diffusers.DPMSolverMultistepScheduler(
                **KW, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")}


def run_ref(make, eps_fn, x_T, n, seed):
    """diffusers' loop: eps = model(x, t); x = scheduler.step(eps, t, x).prev_sample."""
    sched = make()
    sched.set_timesteps(n)
    g = torch.Generator().manual_seed(seed)
    x = x_T.clone() * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = eps_fn(sched.scale_model_input(x, t), t)
        kw = {"generator": g} if isinstance(sched, (diffusers.DDPMScheduler, diffusers.DDIMScheduler)) else {}
        x = sched.step(eps, t, x, **kw).prev_sample
    return x


# --- measurement --------------------------------------------------------------------------------------------

def quality(x, gmm, ref, theta):
    x = x.double().reshape(len(x), -1)
    ok = torch.isfinite(x).all(1)
    if not ok.any():
        return {"sw2": float("nan"), "nll": float("nan"), "nonfinite": len(x)}
    return {"sw2": sliced_w2(x[ok], ref[ok], theta), "nll": float(-gmm.log_prob(x[ok]).mean()),
            "nonfinite": int((~ok).sum())}


class ZeroNet(torch.nn.Module):
    """A trivial network: returns a precomputed zero eps, so timing measures the sampler alone."""

    def __init__(self, like):
        super().__init__()
        self.zero = torch.zeros_like(like)

    def forward(self, x, t, cond=None):
        return self.zero


def overheads(sch, shape, steps, repeats=5):
    """Per-step wall time (us) with a trivial denoiser; every sampler timed in turn each round, best round kept,
    so load from other processes hits ours and diffusers' alike."""
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    den = Denoiser(ZeroNet(x_T), sch)
    fns = {label: (lambda n=name, st=st, o=opts: run_ours(den, x_T, n, st, o, 0), nfe(name, st))
           for label, name, st, opts in our_runs(steps)}
    if diffusers is not None:
        zero = torch.zeros(shape)
        for label, make in ref_schedulers().items():
            fns[label] = (lambda m=make: run_ref(m, lambda x, t: zero, x_T, steps, 0), steps)
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for label, (fn, n_calls) in fns.items():
            t0 = time.perf_counter()
            fn()
            best[label] = min(best[label], 1e6 * (time.perf_counter() - t0) / n_calls)
    return best


def draw(gmm, n: int, g: torch.Generator):
    """One independent draw from g: x_T, a reference sample of the true mixture, and 256 unit projections."""
    x_T, ref = torch.randn(n, gmm.D, generator=g), gmm.sample(n, g)
    theta = torch.randn(gmm.D, 256, generator=g, dtype=torch.float64)
    return x_T, ref, theta / theta.norm(dim=0, keepdim=True)


def bench_setting(tag, gmm, n, nfes, sch, seed=0):
    x_T, ref, theta = draw(gmm, n, torch.Generator().manual_seed(seed))
    # the noise floor: SW2 of independent true draws against ref (a perfect sampler scores like this), over 10 draws
    draws = torch.tensor([sliced_w2(gmm.sample(n, torch.Generator().manual_seed(100 + i)), ref, theta) for i in range(10)])
    floor = {"sw2": float(draws.mean()), "sw2_std": float(draws.std()), "sw2_max": float(draws.max()),
             "nll": float(-gmm.log_prob(ref).mean())}
    net = ExactGMMNet(gmm, sch)
    den = Denoiser(net, sch)
    eps_fn = lambda x, t: net(x, torch.full((x.shape[0],), float(t)))
    rows = []
    for n_fe in nfes:
        outs = {}
        for label, name, st, opts in our_runs(n_fe):
            t0 = time.perf_counter()
            outs[label] = run_ours(den, x_T, name, st, opts, seed + 1)
            rows.append({"setting": tag, "nfe": nfe(name, st), "sampler": label, **quality(outs[label], gmm, ref, theta),
                         "seconds": time.perf_counter() - t0})
        if diffusers is not None:
            for label, make in ref_schedulers().items():
                t0 = time.perf_counter()
                x = run_ref(make, eps_fn, x_T, n_fe, seed + 1)
                ours = outs[{"diffusers DDPM": "ddpm (beta_tilde)", "diffusers DDIM": "ddim eta=0",
                             "diffusers DPM++2M": "dpmpp_2m"}[label]]
                rows.append({"setting": tag, "nfe": n_fe, "sampler": label, **quality(x, gmm, ref, theta),
                             "max_abs_diff_to_ours": float((x - ours).abs().max()), "seconds": time.perf_counter() - t0})
        print_rows([r for r in rows if r["nfe"] in (n_fe, n_fe - 1) and r["setting"] == tag], floor if n_fe == nfes[0] else None)
    return {"floor": floor, "n": n, "rows": rows}


def sw2_over_draws(den, gmm, n, runs: dict, repeats: int, seed: int):
    """SW2 of every run {label: (sampler, steps, options)} and of an independent true sample ("true draw", the floor)
    over `repeats` independent draws of x_T, the reference sample and the projections: (values, means, sds)."""
    sw2 = {k: [] for k in ["true draw", *runs]}
    for r in range(repeats):
        g = torch.Generator().manual_seed(seed + r)
        x_T, ref, theta = draw(gmm, n, g)
        sw2["true draw"].append(sliced_w2(gmm.sample(n, g), ref, theta))
        for label, (name, steps, opts) in runs.items():
            sw2[label].append(quality(run_ours(den, x_T, name, steps, opts, seed + r), gmm, ref, theta)["sw2"])
    mean = {k: sum(v) / len(v) for k, v in sw2.items()}
    sd = {k: float(torch.tensor(v).std()) if len(v) > 1 else 0.0 for k, v in sw2.items()}
    return sw2, mean, sd


def target_repeats(gmm, n, sch, repeats, seed=1000):
    """The 10-NFE target over `repeats` independent draws of x_T, the reference sample and the projections.

    One draw's SW2 scatters by about a third of the floor (a 1000-step run can land far below it), so the ratio
    is taken of the means over draws; each draw also scores an independent true sample (the floor)."""
    net = ExactGMMNet(gmm, sch)
    den = Denoiser(net, sch)
    runs = {"ddpm (beta_tilde)@1000": ("ddpm", 1000, {"timesteps": timesteps_for(T, 1000, "leading"),
                                                      "variance": "beta_tilde"}),
            "dpmpp_2m@10": ("dpmpp_2m", 10, {"timesteps": dpm_timesteps(10)}),
            "dpmpp_2m logsnr@10": ("dpmpp_2m", 10, {"spacing": "logsnr"}),
            "dpmpp_2m quadratic@10": ("dpmpp_2m", 10, {"spacing": "quadratic"})}
    sw2, mean, sd = sw2_over_draws(den, gmm, n, runs, repeats, seed)
    out = {"repeats": repeats, "n": n, "sw2": sw2, "sw2_mean": mean, "sw2_sd": sd,
           **{f"{k} / ddpm@1000 SW2 (means)": mean[k] / mean["ddpm (beta_tilde)@1000"]
              for k in ("dpmpp_2m@10", "dpmpp_2m logsnr@10", "dpmpp_2m quadratic@10")}}
    print("  " + ", ".join(f"{k} {mean[k]:.4f} +- {sd[k]:.4f}" for k in sw2))
    print("  ratio of means to 1000-step DDPM: " + ", ".join(
        f"{k} {v:.2f}" for k, v in out.items() if k.endswith("(means)")), flush=True)
    return out


def pc_repeats(gmm, n, sch, repeats, nfes=(20, 50), seed=3000):
    """Predictor-corrector rows (Song et al. 2021): at about equal network evaluations, the DDPM (ancestral) predictor
    alone at N steps against PC with k = (N + 1) // 2 predictor steps and one corrector step after each (2k - 1
    evaluations, never more than N), the corrector's snr hand-picked (0.16, the paper's) or automatic; SW2 means over
    `repeats` independent draws. Target (fixed before measuring): the automatic snr beats both."""
    den = Denoiser(ExactGMMNet(gmm, sch), sch)
    out = {}
    for N in nfes:
        k = (N + 1) // 2
        lin = {"spacing": "linspace"}
        runs = {f"ddpm@{N}": ("ddpm", N, lin), f"pc ddpm@{k}+1 snr 0.16": ("pc", k, {**lin, "snr": 0.16}),
                f"pc ddpm@{k}+1 snr auto": ("pc", k, {**lin, "snr": None})}
        sw2, mean, sd = sw2_over_draws(den, gmm, n, runs, repeats, seed)
        auto, hand, alone = (mean[f"pc ddpm@{k}+1 snr auto"], mean[f"pc ddpm@{k}+1 snr 0.16"], mean[f"ddpm@{N}"])
        out[str(N)] = {"sw2": sw2, "sw2_mean": mean, "sw2_sd": sd,
                       "nfe": {label: nfe(name, st, corrector_steps=1) for label, (name, st, _) in runs.items()},
                       "auto beats the predictor alone": auto < alone, "auto beats snr 0.16": auto < hand}
        print(f"  NFE {N}: " + ", ".join(f"{key} {mean[key]:.4f} +- {sd[key]:.4f}" for key in sw2), flush=True)
    return out


def print_rows(rows, floor=None):
    if floor is not None:
        print(f"  floor (10 true draws vs ref): SW2 {floor['sw2']:.4f} +- {floor['sw2_std']:.4f} (max {floor['sw2_max']:.4f}),"
              f" true mean NLL {floor['nll']:.3f}")
        print(f"  {'setting':7} {'NFE':>5} {'sampler':20} {'SW2':>8} {'NLL':>9} {'|ours-diffusers|':>16} {'sec':>6}")
    for r in rows:
        d = r.get("max_abs_diff_to_ours")
        print(f"  {r['setting']:7} {r['nfe']:5d} {r['sampler']:20} {r['sw2']:8.4f} {r['nll']:9.3f} "
              f"{'' if d is None else f'{d:.2e}':>16} {r['seconds']:6.2f}", flush=True)


def targets(res):
    """The issue's targets, evaluated on the measured numbers."""
    out = {}
    for tag, s in res["settings"].items():
        rows = s["rows"]
        get = lambda name, n: next((r["sw2"] for r in rows if r["sampler"] == name and r["nfe"] == n), float("nan"))
        ddpm1000, dpm10 = get("ddpm (beta_tilde)", 1000), get("dpmpp_2m", 10)
        t = {}
        # one draw: a finite-sample SW2 scatters about its floor (independent true draws score floor +- sd) and a
        # lucky 1000-step draw can land far below it, so the target is judged on res["target_repeats"] (the means
        # over independent draws); these single-draw ratios are kept for the table
        t["dpmpp_2m@10 / ddpm@1000 SW2 (one draw)"] = dpm10 / ddpm1000
        t["dpmpp_2m logsnr@10 / ddpm@1000 SW2 (one draw)"] = get("dpmpp_2m logsnr", 10) / ddpm1000
        t["dpmpp_2m@10 / floor SW2"] = dpm10 / s["floor"]["sw2"]
        if diffusers is not None:  # ratio of SW2, ours / diffusers, per NFE; > 1.01 counts as worse
            for ours, ref in (("ddim eta=0", "diffusers DDIM"), ("dpmpp_2m", "diffusers DPM++2M"),
                              ("ddpm (beta_tilde)", "diffusers DDPM")):
                ratios = {n: get(ours, n) / get(ref, n) for n in s["nfes"]}
                t[f"SW2 {ours} / {ref}"] = ratios
                # worse: ours non-finite, or more than 1% above a finite reference (a non-finite reference loses)
                t[f"NFEs where {ours} is worse than {ref}"] = [
                    n for n, r in ratios.items() if not math.isfinite(get(ours, n)) or r > 1.01]
                t[f"NFEs where {ref} gave non-finite samples"] = [
                    n for n in s["nfes"] if any(r["nonfinite"] for r in rows if r["sampler"] == ref and r["nfe"] == n)]
        out[tag] = t
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer samples and NFEs (CI smoke run)")
    p.add_argument("--nfes", type=int, nargs="+", help="override the NFE list")
    p.add_argument("--target-repeats", type=int, default=None,
                   help="independent draws for the 10-NFE target (default 5; 2 with --quick)")
    p.add_argument("--target-only", action="store_true", help="only the repeated 10-NFE target measurement")
    p.add_argument("--pc", action="store_true", help="only the predictor-corrector rows (samplers_pc.json)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "samplers.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.pc:
        sch = make_schedule("linear", T)
        repeats = args.target_repeats or (2 if args.quick else 30)
        res = {"T": T, "repeats": repeats, "settings": {}}
        for tag, gmm, n in (("2-D", gmm_2d(), 1000 if args.quick else 10000),
                            ("64-D", diagonal_gmm(64, K=3), 300 if args.quick else 2000)):
            print(tag, flush=True)
            res["settings"][tag] = pc_repeats(gmm, n, sch, repeats, (20,) if args.quick else (20, 50))
        out = args.out if args.out != p.get_default("out") else str(Path(args.out).with_name("samplers_pc.json"))
        atomic_write_json(out, res)
        print(f"written {out}")
        return 0
    sch = make_schedule("linear", T)
    nfes = args.nfes or ([5, 10, 20] if args.quick else [5, 10, 20, 50, 100, 250, 1000])
    n2, n64 = (1000, 300) if args.quick else (10000, 2000)
    res = {"T": T, "schedule": "linear 1e-4..0.02", "diffusers": getattr(diffusers, "__version__", None),
           "torch": torch.__version__, "quick": args.quick, "settings": {}}
    repeats = args.target_repeats or (2 if args.quick else 5)
    res["target_repeats"] = {}
    for tag, gmm, n in (("2-D", gmm_2d(), n2), ("64-D", diagonal_gmm(64, K=3), n64)):
        print(f"{tag}: 10-NFE target over {repeats} independent draws of {n} samples", flush=True)
        res["target_repeats"][tag] = target_repeats(gmm, n, sch, repeats)
        if args.target_only:
            continue
        print(f"{tag}: {n} samples, NFE {nfes}", flush=True)
        res["settings"][tag] = {"nfes": nfes, **bench_setting(tag, gmm, n, nfes, sch)}
    if args.target_only:
        atomic_write_json(args.out, res)
        print(f"wrote {args.out}")
        return 0
    print("per-step overhead (us), trivial denoiser, 100 steps:")
    res["overhead_us"] = {}
    for shape in ((16, 2), (256, 64)):
        o = overheads(sch, shape, 20 if args.quick else 100)
        res["overhead_us"]["x".join(map(str, shape))] = o
        print(f"  batch {shape}: " + ", ".join(f"{k} {v:.0f}" for k, v in o.items()), flush=True)
    res["targets"] = targets(res)
    print("targets:", json.dumps(res["targets"], indent=1))
    atomic_write_json(args.out, res)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
