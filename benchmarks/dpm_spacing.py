"""DPM-Solver++(2M) and SDE-DPM-Solver++(2M) at 10 NFE with different timestep spacings, against 1000-step DDPM
(three seeds), with the exact Gaussian-mixture denoiser of benchmarks/samplers.py: does any reach the 1.5x target?

    python benchmarks/dpm_spacing.py      # about 5 minutes on one core; writes results/dpm_spacing.json
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import samplers as S  # noqa: E402  (the SW2 / NLL measurement and diffusers' default spacing)

from diffsuite.core.analytic import ExactGMMNet, diagonal_gmm, gmm_2d  # noqa: E402
from diffsuite.core.denoiser import Denoiser  # noqa: E402
from diffsuite.core.samplers import karras_sigmas, logsnr_timesteps, sample  # noqa: E402
from diffsuite.core.schedules import make_schedule  # noqa: E402
from diffsuite.core.utils import atomic_write_json  # noqa: E402


def karras_t(sch, n: int, rho: float) -> torch.Tensor:
    """Karras et al. (2022) sigmas between the schedule's extremes, mapped back to fractional t."""
    sig = karras_sigmas(n, float(sch.sigma[0]), float(sch.sigma[-1]), rho)[:-1]
    return sch.sigma_to_t(sig).double().clamp(0, sch.T - 1)


def quadratic_t(sch, n: int) -> torch.Tensor:
    """Time-quadratic spacing (Lu et al. 2022, the DPM-Solver code's 'time_quadratic')."""
    return torch.linspace(math.sqrt(sch.T - 1), 0, n, dtype=torch.float64) ** 2


def main() -> int:
    torch.set_num_threads(1)
    sch = make_schedule("linear", S.T)
    spacings = {"linspace (diffusers default)": lambda n: S.dpm_timesteps(n), "log-SNR": lambda n: logsnr_timesteps(sch, n),
                "time-quadratic": lambda n: quadratic_t(sch, n), "karras rho=7": lambda n: karras_t(sch, n, 7.0),
                "karras rho=5": lambda n: karras_t(sch, n, 5.0), "karras rho=3": lambda n: karras_t(sch, n, 3.0)}
    out = {}
    for tag, gmm, n in (("2-D", gmm_2d(), 10000), ("64-D", diagonal_gmm(64, K=3), 2000)):
        g = torch.Generator().manual_seed(0)
        x_T, ref = torch.randn(n, gmm.D, generator=g), gmm.sample(n, g)
        theta = torch.randn(gmm.D, 256, generator=g, dtype=torch.float64)
        theta = theta / theta.norm(dim=0, keepdim=True)
        den = Denoiser(ExactGMMNet(gmm, sch), sch)
        ddpm = [S.quality(sample(den, x_T.shape, "ddpm", 1000, x_T=x_T.clone(), variance="beta_tilde",
                                 generator=torch.Generator().manual_seed(s)), gmm, ref, theta) for s in (1, 2, 3)]
        base = sum(q["sw2"] for q in ddpm) / len(ddpm)
        rows = {}
        for label, ts in spacings.items():
            q = S.quality(sample(den, x_T.shape, "dpmpp_2m", 10, x_T=x_T.clone(), timesteps=ts(10),
                                 generator=torch.Generator().manual_seed(1)), gmm, ref, theta)
            rows[label] = {**q, "ratio_to_ddpm1000_mean": q["sw2"] / base}
            print(f"{tag:5s} dpm++(2M) 10 NFE {label:28s} SW2 {q['sw2']:.4f}  NLL {q['nll']:.3f}  "
                  f"x{q['sw2'] / base:.2f} of DDPM-1000", flush=True)
        sde = {}
        for label, ts in spacings.items():  # the stochastic variant: three noise seeds each
            qs = [S.quality(sample(den, x_T.shape, "dpmpp_2m_sde", 10, x_T=x_T.clone(), timesteps=ts(10),
                                   generator=torch.Generator().manual_seed(s)), gmm, ref, theta) for s in (1, 2, 3)]
            mean = sum(q["sw2"] for q in qs) / len(qs)
            sde[label] = {"seeds": qs, "mean_sw2": mean, "ratio_to_ddpm1000_mean": mean / base}
            print(f"{tag:5s} SDE-dpm++(2M) 10 NFE {label:24s} SW2 {mean:.4f} (3 seeds)  x{mean / base:.2f} of DDPM-1000",
                  flush=True)
        out[tag] = {"n": n, "ddpm1000_seeds": ddpm, "ddpm1000_mean_sw2": base, "dpmpp_2m_10": rows,
                    "dpmpp_2m_sde_10": sde}
        print(f"{tag:5s} DDPM-1000 SW2 over 3 seeds: " + ", ".join(f"{q['sw2']:.4f}" for q in ddpm), flush=True)
    atomic_write_json(Path(__file__).parent / "results" / "dpm_spacing.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
