"""`diffsuite classify CHECKPOINT --input FILE_OR_SPLIT`: a conditional model as a zero-shot classifier (core.classify;
Li et al. 2023). Each candidate condition the task offers (an image model's classes) is scored by the model's
noise-prediction error on the same (t, eps) pairs; the budget is network evaluations per candidate on average.

On one file: the ranking with each candidate's error and probability. On a split ('train', 'val', 'test'): accuracy,
the mean evaluations per candidate, a confusion matrix (PNG) and the expected calibration error of the probabilities,
both at temperature 1 and with the temperature fitted by two-fold cross-fitting on the split (fit on one half, score
the other, and back). JSON beside it all in --out (default <run>/classify/<input>).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from diffsuite.core.classify import classify, expected_calibration_error
from diffsuite.core.config import positive_int
from diffsuite.core.utils import atomic_write_json

SPLITS = ("train", "val", "test")


def fit_temperature(errors: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature tau minimising the NLL of softmax(-errors / tau) (Guo et al. 2017's temperature scaling), on a
    log-spaced grid."""
    grid = torch.logspace(-4, 4, 161)
    nll = [float(torch.nn.functional.cross_entropy(-errors / tau, labels)) for tau in grid]
    return float(grid[int(np.argmin(nll))])


def cross_fitted_ece(errors: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> tuple[float, list[float]]:
    """ECE with a temperature fitted on the other half of the inputs (two folds), and the two temperatures."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    halves = perm[: len(perm) // 2], perm[len(perm) // 2:]
    probs, taus = torch.empty(errors.shape), []
    for fit, score in (halves, halves[::-1]):
        tau = fit_temperature(errors[fit], labels[fit])
        probs[score] = torch.softmax(-errors[score] / tau, 1)
        taus.append(tau)
    return expected_calibration_error(probs, labels), taus


def confusion_png(conf: np.ndarray, names: list[str], path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1 + 0.45 * len(names), 1 + 0.45 * len(names)))
    ax.imshow(conf, cmap="Blues")
    for (i, j), v in np.ndenumerate(conf):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > conf.max() / 2 else "black")
    ax.set_xticks(range(len(names)), names, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_classify(loaded, source: str, budget: float, norm: str = "l2", seed: int = 0, n=None, batch_size: int = 256):
    """Score `source` with a loaded checkpoint; returns (result dict, the Candidates scored, Ranking, class errors
    (B, classes): each class's lowest candidate error)."""
    cands = loaded.task.classification_inputs(loaded.recipe, source)
    if n is not None:
        cands = cands.first(n)
    t0 = time.perf_counter()
    r = classify(loaded.denoiser, cands.x, cands.conditions, budget=budget, norm=norm, batch_size=batch_size,
                 generator=torch.Generator().manual_seed(seed), per_input=cands.per_input)
    names, labels, errors = cands.names, cands.labels, cands.class_errors(r.errors)
    res = {"checkpoint": str(loaded.checkpoint), "input": source, "n": len(cands.x), "candidates": names,
           "conditions_per_input": len(cands.class_of), "norm": norm, "budget": budget,
           "rounds": [list(rd) for rd in r.rounds], "seconds": time.perf_counter() - t0,
           "nfe_per_candidate": float(r.nfe.float().mean()) / len(cands.class_of)}
    if labels is not None:
        pred = cands.predict(r)
        res["accuracy"] = float((pred == labels).float().mean())
        res["ece"] = expected_calibration_error(torch.softmax(-errors, 1), labels)
        res["ece_cross_fitted"], res["temperatures"] = cross_fitted_ece(errors, labels, seed)
        conf = np.zeros((len(names), len(names)), dtype=np.int64)
        np.add.at(conf, (labels.numpy(), pred.numpy()), 1)
        res["confusion"] = conf.tolist()
        res["predictions"] = pred.tolist()
    return res, cands, r, errors


def cmd_classify(args) -> int:
    loaded = args.load(args.checkpoint, ema=not args.no_ema, command="diffsuite classify")
    res, cands, r, errors = run_classify(loaded, args.input, args.budget, args.norm, args.seed, args.n)
    labels, names = cands.labels, cands.names
    stem = args.input if args.input in SPLITS else Path(args.input).stem
    out = Path(args.out) if args.out else Path(loaded.checkpoint).parent.parent / "classify" / stem
    out.mkdir(parents=True, exist_ok=True)
    if labels is None:
        p = torch.softmax(-errors[0], 0)
        alive = torch.zeros(len(names), dtype=torch.bool)
        alive[cands.class_of[r.alive[0]]] = True
        order = torch.argsort(torch.where(alive, errors[0], errors[0] + 1e30))  # the last round's classes first
        res["ranking"] = [{"candidate": names[i], "error": float(errors[0, i]), "probability": float(p[i]),
                           "last_round": bool(alive[i])} for i in order.tolist()]
        for k, row in enumerate(res["ranking"][:10]):
            print(f"{k + 1:3d}. {row['candidate']:>12s}  error {row['error']:.5f}  p {row['probability']:.3f}")
    else:
        png = confusion_png(np.array(res["confusion"]), names, out / "confusion.png",
                            f"{args.input}: accuracy {res['accuracy']:.3f}, {res['nfe_per_candidate']:.1f} NFE/class")
        res["confusion_png"] = str(png)
        print(f"{args.input}: accuracy {res['accuracy']:.4f} on {res['n']} inputs, {res['nfe_per_candidate']:.1f} "
              f"network evaluations per candidate; ECE {res['ece']:.3f} (temperature 1), {res['ece_cross_fitted']:.3f} "
              f"(temperature fitted on the other half); confusion matrix {png}")
    atomic_write_json(out / "classify.json", res)
    print(f"written {out / 'classify.json'}")
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("classify", help="rank a conditional model's conditions for an input (zero-shot "
                              "diffusion classifier)", description=__doc__)
    p.add_argument("checkpoint", help="a run folder or checkpoint folder of a conditional model")
    p.add_argument("--input", required=True, help="a file (an image) or a split: train | val | test")
    p.add_argument("--budget", type=float, default=20, help="network evaluations per candidate on average (default 20)")
    p.add_argument("--norm", choices=("l2", "l1"), default="l2", help="the noise-prediction error's norm")
    p.add_argument("--n", type=positive_int, default=None, help="first N inputs of a split only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default <run>/classify/<input>)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.set_defaults(func=cmd_classify)
