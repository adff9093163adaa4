"""DPM-Solver++(2M) and SDE-DPM-Solver++(2M) at 10 NFE with different timestep spacings, against 1000-step DDPM
with the exact Gaussian-mixture denoiser of benchmarks/samplers.py, each SW2 averaged over independent draws of
x_T, the reference sample and the projections: does any spacing reach the 1.5x target?

    python benchmarks/dpm_spacing.py      # about 10 minutes on one core; writes results/dpm_spacing.json
    # the check on fresh draws: 30 draws from seed 3000, DPM-Solver++(2M) only, four spacings (about 15 minutes)
    python benchmarks/dpm_spacing.py --repeats 30 --seed 3000 --solvers dpmpp_2m \
        --spacings time-power time-quadratic log-SNR "linspace (diffusers default)" --out benchmarks/results/dpm_spacing_30draws.json
    # the same on two mixtures that no choice was made on
    python benchmarks/dpm_spacing.py --repeats 10 --settings 16-D 256-D --solvers dpmpp_2m \
        --spacings time-power time-quadratic log-SNR "linspace (diffusers default)" --out benchmarks/results/dpm_spacing_unseen.json
    # and on 30 fresh draws of those two mixtures (about 25 minutes)
    python benchmarks/dpm_spacing.py --repeats 30 --seed 3000 --settings 16-D 256-D --solvers dpmpp_2m \
        --spacings time-power time-quadratic log-SNR "linspace (diffusers default)" --out benchmarks/results/dpm_spacing_unseen_30draws.json
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import samplers as S  # noqa: E402  (the SW2 / NLL measurement and diffusers' default spacing)

from diffsuite.core.analytic import ExactGMMNet, diagonal_gmm, gmm_2d  # noqa: E402
from diffsuite.core.denoiser import Denoiser  # noqa: E402
from diffsuite.core.samplers import POWER_P, karras_sigmas, logsnr_timesteps, power_timesteps, quadratic_timesteps, sample  # noqa: E402
from diffsuite.core.schedules import make_schedule  # noqa: E402
from diffsuite.core.utils import atomic_write_json  # noqa: E402


def karras_t(sch, n: int, rho: float) -> torch.Tensor:
    """Karras et al. (2022) sigmas between the schedule's extremes, mapped back to fractional t."""
    sig = karras_sigmas(n, float(sch.sigma[0]), float(sch.sigma[-1]), rho)[:-1]
    return sch.sigma_to_t(sig).double().clamp(0, sch.T - 1)


def mean_sw2(den, gmm, draws, sampler, steps, **opts) -> tuple[float, list[float]]:
    """SW2 to each draw's reference sample, averaged over the draws (one draw scatters by ~1/3 of the floor)."""
    sw2 = [S.quality(sample(den, x_T.shape, sampler, steps, x_T=x_T.clone(), generator=torch.Generator().manual_seed(i),
                              **opts), gmm, ref, theta)["sw2"] for i, (x_T, ref, theta) in enumerate(draws)]
    return sum(sw2) / len(sw2), sw2


SETTINGS = {"2-D": lambda: (gmm_2d(), 10000), "64-D": lambda: (diagonal_gmm(64, K=3), 2000),
            # two mixtures no spacing was chosen on, to check a choice made on the first two
            "16-D": lambda: (diagonal_gmm(16, K=4, seed=1), 4000), "256-D": lambda: (diagonal_gmm(256, K=3, seed=2), 2000)}


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=10, help="independent draws of x_T, reference sample, projections")
    p.add_argument("--seed", type=int, default=1000, help="draw r uses seed + r")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["2-D", "64-D"])
    p.add_argument("--solvers", nargs="+", default=["dpmpp_2m", "dpmpp_2m_sde"])
    p.add_argument("--spacings", nargs="+", default=None, help="labels to run (default: all)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "dpm_spacing.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sch = make_schedule("linear", S.T)
    spacings = {"linspace (diffusers default)": lambda n: S.dpm_timesteps(n), "log-SNR": lambda n: logsnr_timesteps(sch, n),
                "time-quadratic": lambda n: quadratic_timesteps(sch.T, n),
                "time-power": lambda n: power_timesteps(sch.T, n), "karras rho=7": lambda n: karras_t(sch, n, 7.0),
                "karras rho=5": lambda n: karras_t(sch, n, 5.0), "karras rho=3": lambda n: karras_t(sch, n, 3.0)}
    if args.spacings:
        unknown = set(args.spacings) - set(spacings)
        if unknown:
            p.error(f"unknown spacing label(s) {sorted(unknown)}; valid: {list(spacings)}")
        spacings = {k: spacings[k] for k in args.spacings}
    out = {"repeats": args.repeats, "seed": args.seed, "time_power_p": POWER_P}
    for tag in args.settings:
        gmm, n = SETTINGS[tag]()
        draws = [S.draw(gmm, n, torch.Generator().manual_seed(args.seed + r)) for r in range(args.repeats)]
        den = Denoiser(ExactGMMNet(gmm, sch), sch)
        base, base_all = mean_sw2(den, gmm, draws, "ddpm", 1000, variance="beta_tilde")
        print(f"{tag:5s} DDPM-1000 SW2 mean over {len(draws)} draws {base:.4f}", flush=True)
        rows = {}
        for solver in args.solvers:
            for label, ts in spacings.items():
                m, all_ = mean_sw2(den, gmm, draws, solver, 10, timesteps=ts(10))
                rows[f"{solver} {label}"] = {"mean_sw2": m, "sw2": all_, "ratio_to_ddpm1000": m / base}
                print(f"{tag:5s} {solver:13s} 10 NFE {label:28s} SW2 {m:.4f}  x{m / base:.2f} of DDPM-1000", flush=True)
        out[tag] = {"n": n, "ddpm1000_mean_sw2": base, "ddpm1000_sw2": base_all, "nfe10": rows}
    atomic_write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
