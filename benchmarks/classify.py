"""The zero-shot diffusion classifier (core.classify; `diffsuite classify`) against the budget, beside a trained
classifier: top-1 accuracy and calibration per budget (network evaluations per class on average), a plot of accuracy
against budget, and, for digits, the accuracy of the small CNN that digits-FID uses (trained on the train split).

    python benchmarks/classify.py --checkpoint runs/digits --budgets 5 10 20 50 100 200   # scores the test split
    python benchmarks/classify.py --from runs/digits/classify/b*/classify.json           # collects earlier runs

Writes benchmarks/results/classify_digits.json and docs/figures/classify_budget.png.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cnn_accuracy(recipe) -> float:
    from diffsuite.modalities.image import metrics
    d = recipe.data
    return float(metrics.digits_classifier(d.image_size, d.digits_mode)[1]["test_accuracy"])


def plot(rows: list[dict], cnn: float | None, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = sorted(rows, key=lambda r: r["nfe_per_candidate"])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["nfe_per_candidate"] for r in rows], [r["accuracy"] for r in rows], "o-", label="diffusion classifier")
    if cnn is not None:
        ax.axhline(cnn, color="gray", ls="--", label=f"small CNN (trained) {cnn:.3f}")
    ax.axhline(0.1, color="lightgray", ls=":", label="chance 0.1")
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per class (mean)")
    ax.set_ylabel("top-1 accuracy, test digits")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint")
    p.add_argument("--budgets", type=float, nargs="+", default=[5, 10, 20, 50, 100, 200])
    p.add_argument("--from", dest="files", nargs="+", help="classify.json files of earlier `diffsuite classify` runs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "classify_digits.json")
    p.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "classify_budget.png")
    a = p.parse_args(argv)
    import torch
    from diffsuite.recipes.run import load
    torch.set_num_threads(a.threads)
    keep = ("budget", "nfe_per_candidate", "accuracy", "ece", "ece_cross_fitted", "temperatures", "n", "seconds",
            "rounds", "checkpoint")
    if a.files:
        rows = [{k: v for k, v in json.loads(Path(f).read_text()).items() if k in keep} for f in a.files]
        checkpoint = rows[0]["checkpoint"]
    else:
        if not a.checkpoint:
            p.error("--checkpoint or --from is required")
        from diffsuite.recipes.classify import run_classify
        ld = load(a.checkpoint)
        rows = [{k: v for k, v in run_classify(ld, "test", b)[0].items() if k in keep} for b in a.budgets]
        checkpoint = a.checkpoint
    ld = load(checkpoint)
    cnn = cnn_accuracy(ld.recipe) if ld.recipe.data.source == "digits" else None
    rows.sort(key=lambda r: r["nfe_per_candidate"])
    print(f"{'NFE/class':>10s} {'accuracy':>9s} {'ECE (T=1)':>10s} {'ECE (fitted)':>13s} {'seconds':>8s}")
    for r in rows:
        print(f"{r['nfe_per_candidate']:10.1f} {r['accuracy']:9.4f} {r['ece']:10.3f} {r['ece_cross_fitted']:13.3f} "
              f"{r['seconds']:8.0f}")
    if cnn is not None:
        print(f"small CNN (digits-FID's classifier, trained on the train split): {cnn:.4f}")
    res = {"checkpoint": checkpoint, "rows": rows, "cnn_accuracy": cnn, "figure": str(plot(rows, cnn, a.figure))}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
