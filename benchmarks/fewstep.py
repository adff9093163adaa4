"""Few-step students against their teacher (so far: progressive and consistency distillation on toy2d).

    python benchmarks/fewstep.py toy --teacher runs/toy_teacher --students runs/toy_pd runs/toy_cd [--n 4000 --seeds 0 1 2]

toy: SW2 (sliced Wasserstein-2, 256 random projections) between 4000 samples and a fresh draw of the two-moons data,
for the teacher with DDIM at 2, N and 100 steps (the 'uniform' grid at N, diffusers' linspace at 100) and
DPM-Solver++(2M) at 2 steps, and for each student with its own sampler (a consistency student also at 1, 2 and 4
steps); the floor is two independent draws of the
data. Means over --seeds (sampling seeds; the data draw and the projections are fixed). Writes
benchmarks/results/fewstep_toy.json. The per-modality tables (images, audio, trajectory, music) and DDGAN are not
built yet.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from samplers import sliced_w2  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def toy_rows(teacher: Path, students: list[Path], n: int, seeds: list[int]) -> list[dict]:
    from diffsuite.recipes import run
    from diffsuite.recipes.toy2d import make_points
    t = run.load(teacher)
    d = t.recipe.data
    ref = make_points(d.kind, n, d.noise, 1_000).double()
    theta = torch.nn.functional.normalize(torch.randn(2, 256, generator=torch.Generator().manual_seed(0),
                                                      dtype=torch.float64), dim=0)

    def sw(ld, sampler, steps, spacing) -> tuple[float, float]:
        ld.recipe.sample.spacing = spacing
        vals, t0 = [], time.perf_counter()
        for s in seeds:
            x, _ = run.generate(ld.denoiser, ld.task, ld.recipe, n=n, sampler=sampler, steps=steps, seed=s,
                                progress=False)
            vals.append(sliced_w2(x.double(), ref, theta))
        return sum(vals) / len(vals), (time.perf_counter() - t0) / len(seeds) / n

    rows = []
    steps_seen = sorted({run.load(s).recipe.sample.steps for s in students} | {1, 2, 4})
    for k in steps_seen:
        rows.append({"model": "teacher", "sampler": "ddim", "steps": k, "spacing": "uniform",
                     **dict(zip(("sw2", "seconds_per_sample"), sw(t, "ddim", k, "uniform")))})
    rows.append({"model": "teacher", "sampler": "dpmpp_2m", "steps": 2, "spacing": "linspace",
                 **dict(zip(("sw2", "seconds_per_sample"), sw(t, "dpmpp_2m", 2, "linspace")))})
    rows.append({"model": "teacher", "sampler": "ddim", "steps": 100, "spacing": "linspace",
                 **dict(zip(("sw2", "seconds_per_sample"), sw(t, "ddim", 100, "linspace")))})
    for s in students:
        st = run.load(s)
        smp = st.recipe.sample
        # a progressive student has one grid; a consistency student samples in any number of steps (1, 2, 4 here)
        for k in ([smp.steps] if st.recipe.distill.method == "progressive" else sorted({smp.steps, 1, 2, 4})):
            rows.append({"model": f"student ({st.recipe.distill.method}) {s}", "sampler": smp.sampler, "steps": k,
                         "spacing": smp.spacing,
                         **dict(zip(("sw2", "seconds_per_sample"), sw(st, smp.sampler, k, smp.spacing)))})
    floor = sliced_w2(make_points(d.kind, n, d.noise, 2_000).double(), ref, theta)
    rows.append({"model": "floor: two draws of the data", "sampler": "-", "steps": 0, "spacing": "-", "sw2": floor,
                 "seconds_per_sample": 0.0})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("toy")
    t.add_argument("--teacher", type=Path, required=True)
    t.add_argument("--students", type=Path, nargs="+", required=True)
    t.add_argument("--n", type=int, default=4000)
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    t.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fewstep_toy.json")
    a = p.parse_args(argv)
    rows = toy_rows(a.teacher, a.students, a.n, a.seeds)
    print(f"{'model':58s} {'sampler':9s} {'steps':>5s} {'SW2':>8s} {'ms/sample':>10s}")
    for r in rows:
        print(f"{r['model'][:58]:58s} {r['sampler']:9s} {r['steps']:5d} {r['sw2']:8.4f} {1e3 * r['seconds_per_sample']:10.4f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"teacher": str(a.teacher), "n": a.n, "seeds": a.seeds, "rows": rows,
                                 "threads": torch.get_num_threads()}, indent=2) + "\n")
    print(f"written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
