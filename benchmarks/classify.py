"""The zero-shot diffusion classifier (core.classify; `diffsuite classify`) against the budget, beside recognisers that
see the data: top-1 accuracy and calibration per budget (network evaluations per class candidate on average) and a
plot of accuracy against budget.

digits (image_digits): the accuracy of the small CNN that digits-FID uses (trained on the train split); chance 0.1.
chords (music_bach): the chord of one beat per held-out window among 36 triads (the music task's classification
inputs), beside two note-reading recognisers on the same beats: the project's chord extractor, which defines the labels
(1.0 by construction: the ceiling), and a root-position rule (the bass is the root, the third above it the quality);
floors: the training windows' most frequent triad, and chance 1/36.

    python benchmarks/classify.py --checkpoint runs/digits --budgets 5 10 20 50 100 200   # scores the test split
    python benchmarks/classify.py --from runs/digits/classify/b*/classify.json           # collects earlier runs
    python benchmarks/classify.py --from runs/bach/classify/b*/classify.json --out benchmarks/results/classify_chords.json \
        --figure docs/figures/classify_chords_budget.png

Writes benchmarks/results/classify_digits.json and docs/figures/classify_budget.png by default.
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


def chord_references(loaded, n: int) -> dict:
    """Note-reading recognisers and floors on the first n test windows the music task classifies (see the docstring)."""
    import collections
    import numpy as np
    from diffsuite.modalities.music import chords
    from diffsuite.modalities.music.roll import from_model
    d = loaded.recipe.data
    test = loaded.task.classification_inputs(loaded.recipe, "test").first(n)
    train = loaded.task.classification_inputs(loaded.recipe, "train")
    majority = collections.Counter(train.labels.tolist()).most_common(1)[0][0]
    rule = []
    for x, b in zip(test.x, test.where):
        chroma, bass = chords.chroma_bass(from_model(x[None])[0], d.pitch_lo, d.steps_per_beat)
        rule.append(chords.bass_rule_class(chroma[b], int(bass[b])))
    labels = test.labels.numpy()
    return {"chord extractor (defines the labels)": 1.0,
            "root-position rule (bass = root)": float(np.mean(np.array(rule) == labels)),
            f"most frequent training triad ({test.names[majority]})": float(np.mean(labels == majority)),
            "chance (1/36)": 1 / 36}


def plot(rows: list[dict], references: dict, path: Path, what: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = sorted(rows, key=lambda r: r["nfe_per_candidate"])
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot([r["nfe_per_candidate"] for r in rows], [r["accuracy"] for r in rows], "o-", label="diffusion classifier")
    for (name, acc), ls in zip(references.items(), ("--", "-.", ":", ":")):
        ax.axhline(acc, color="gray", ls=ls, lw=1, label=f"{name} {acc:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per candidate (mean)")
    ax.set_ylabel(f"top-1 accuracy, {what}")
    ax.legend(fontsize=7, loc="best")
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
    if ld.recipe.task == "music":
        references, what = chord_references(ld, rows[0]["n"]), "chord of one beat, held-out windows"
    else:
        cnn = cnn_accuracy(ld.recipe) if ld.recipe.data.source == "digits" else None
        references = {"small CNN (trained)": cnn} if cnn is not None else {}
        references["chance (0.1)"], what = 0.1, "test digits"
    rows.sort(key=lambda r: r["nfe_per_candidate"])
    print(f"{'NFE/class':>10s} {'accuracy':>9s} {'ECE (T=1)':>10s} {'ECE (fitted)':>13s} {'seconds':>8s}")
    for r in rows:
        print(f"{r['nfe_per_candidate']:10.1f} {r['accuracy']:9.4f} {r['ece']:10.3f} {r['ece_cross_fitted']:13.3f} "
              f"{r['seconds']:8.0f}")
    for name, acc in references.items():
        print(f"{name}: {acc:.4f}")
    res = {"checkpoint": checkpoint, "rows": rows, "references": references,
           "figure": str(plot(rows, references, a.figure, what))}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
