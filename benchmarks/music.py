"""Music benchmark: per-piece statistics, Yang & Lerch OA/KL against held-out chorales, memorisation, chord accuracy,
and (secondary) Mittal et al.'s framewise consistency and variance.

    python benchmarks/music.py                      # reference values: held-out vs train, independent-notes baseline
    python benchmarks/music.py --checkpoint RUN     # plus a trained model's samples (chords of held-out windows, CFG)

Prints a table and writes benchmarks/results/music.json.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from diffsuite.core.utils import atomic_write_json
from diffsuite.modalities.music import chords, metrics
from diffsuite.modalities.music.data import RollWindows
from diffsuite.modalities.music.task import MusicDataConfig, pieces_for

STATS = ["pitch_range", "n_pitches_used", "n_pitch_classes_used", "polyphony", "polyphony_rate", "pitch_entropy",
         "pitch_class_entropy", "scale_consistency", "empty_beat_rate", "groove_consistency", "integrity"]


def windows(data: MusicDataConfig, split: str, n: int, seed: int):
    ds = RollWindows(pieces_for(data, split), data.seg_len, 0)
    idx = np.random.default_rng(seed).choice(len(ds), min(n, len(ds)), replace=False)
    return np.stack([ds.window(int(i)) for i in idx]), len(ds)


def summary(rolls, data) -> dict:
    s = [metrics.piece_stats(r, data.pitch_lo, data.steps_per_beat, 4) for r in rolls]
    return {k: (float(np.nanmean([x[k] for x in s])), float(np.nanstd([x[k] for x in s]))) for k in STATS}


def evaluate(name, rolls, ref, train, data, ref_stats, out, conds=None):
    st = summary(rolls, data)
    within = {k: abs(st[k][0] - ref_stats[k][0]) <= ref_stats[k][1] for k in STATS}
    cmp = metrics.compare_sets(list(rolls), list(ref), data.pitch_lo)
    mem = metrics.nearest_distance(rolls, train)
    row = {"stats": st, "within_1sd": within, "n_within_1sd": int(sum(within.values())), "sets": cmp,
           "mean_OA": cmp["mean_OA"], "nearest_train_min": float(mem.min()), "nearest_train_mean": float(mem.mean()),
           "framewise": metrics.consistency_variance(list(rolls), list(ref), data.pitch_lo)}
    if conds is not None:
        row["chord_accuracy"] = float(np.nanmean([chords.accuracy(r, c, data.pitch_lo, data.steps_per_beat)
                                                  for r, c in zip(rolls, conds)]))
    out[name] = row
    return row


def references(data: MusicDataConfig, n: int, seed: int):
    """The rows every comparison stands on: n held-out windows (and their chords), 4000 training windows, the
    training windows scored as if generated (the ceiling) and the independent-notes baseline (the floor)."""
    test, n_test = windows(data, "test", n, seed)
    train, n_train = windows(data, "train", 4000, seed)
    out = {"n_windows": {"train": n_train, "test": n_test}}
    ref_stats = summary(test, data)
    out["held_out_stats"] = ref_stats
    conds = np.stack([chords.extract(r, data.pitch_lo, data.steps_per_beat) for r in test])
    evaluate("train windows (real, reference)", train[:len(test)], test, train, data, ref_stats, out)
    out["held_out_self"] = {"chord_accuracy_own_chords": float(np.nanmean(
        [chords.accuracy(r, c, data.pitch_lo, data.steps_per_beat) for r, c in zip(test, conds)])),
        "nearest_train_min": float(metrics.nearest_distance(test, train).min()),
        "nearest_train_mean": float(metrics.nearest_distance(test, train).mean())}
    base = metrics.sample_independent(metrics.fit_independent(list(train), data.pitch_lo), len(test), seed)
    evaluate("independent-notes baseline", base, test, train, data, ref_stats, out, conds)
    return out, (test, train, conds, ref_stats)


def generate(loaded, conds, guidance, steps, seed, sampler=None, eta=None):
    from diffsuite.modalities.music.roll import from_model
    from diffsuite.recipes.run import generate as gen
    xs = []
    for i in range(0, len(conds), 32):
        c = torch.from_numpy(conds[i:i + 32]) if loaded.recipe.model.chord_cond else None
        x, _ = gen(loaded.denoiser, loaded.task, loaded.recipe, n=len(conds[i:i + 32]), guidance=guidance,
                   sampler=sampler, steps=steps, eta=eta, seed=seed + i, cond=c, progress=False)
        xs.append(from_model(x))
    return np.concatenate(xs), loaded.recipe.data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--n", type=int, default=200, help="windows per set")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the recipe's)")
    ap.add_argument("--sampler", default=None, help="core sampler (default: the recipe's)")
    ap.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the recipe's)")
    ap.add_argument("--limit", type=int, default=None, help="first N chorales only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unguided", action="store_true", help="also sample with guidance 0")
    ap.add_argument("--out", default="benchmarks/results/music.json")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    data = MusicDataConfig(limit=a.limit)
    t0 = time.time()
    out, ref = references(data, a.n, a.seed)
    out["settings"] = vars(a)
    test, train, conds, ref_stats = ref
    if a.checkpoint:
        from diffsuite.recipes.run import load
        loaded = load(a.checkpoint)
        gen_rolls, _ = generate(loaded, conds, a.guidance, a.steps, a.seed, a.sampler, a.eta)
        evaluate(f"model (w={a.guidance})", gen_rolls, test, train, data, ref_stats, out, conds)
        if a.unguided:
            gen0, _ = generate(loaded, conds, 0.0, a.steps, a.seed, a.sampler, a.eta)
            evaluate("model (w=0)", gen0, test, train, data, ref_stats, out, conds)
    out["seconds"] = time.time() - t0
    atomic_write_json(a.out, out)
    print_table(out)
    print(f"\nwritten {a.out}")
    return 0


def print_table(out):
    ho = out["held_out_self"]
    print(f"held-out windows: {out['n_windows']['test']}, train windows: {out['n_windows']['train']}")
    print(f"held-out: chord accuracy vs own chords {ho['chord_accuracy_own_chords']:.3f}, "
          f"nearest-train distance min {ho['nearest_train_min']:.4f} mean {ho['nearest_train_mean']:.4f}")
    print(f"{'set':32s} {'mean OA':>8s} {'#stats in 1sd':>14s} {'chord acc':>10s} {'NN-train min':>13s} {'mean':>8s}"
          f" {'cons/var pitch':>15s} {'cons/var dur':>13s}")
    for k, v in out.items():
        if isinstance(v, dict) and "mean_OA" in v:
            fw = v["framewise"]
            print(f"{k:32s} {v['mean_OA']:8.3f} {v['n_within_1sd']:>8d}/{len(STATS):<5d} "
                  f"{v.get('chord_accuracy', float('nan')):10.3f} {v['nearest_train_min']:13.4f} {v['nearest_train_mean']:8.4f}"
                  f" {fw['pitch']['consistency']:7.3f}/{fw['pitch']['variance']:<7.3f} "
                  f"{fw['duration']['consistency']:6.3f}/{fw['duration']['variance']:<6.3f}")
    print("(cons/var: Mittal et al. 2021 framewise consistency / variance vs the held-out windows; secondary)")
    print(f"{'stat':22s} {'held-out mean ± sd':>22s}")
    for k, (m, s) in out["held_out_stats"].items():
        print(f"{k:22s} {m:12.3f} ± {s:7.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
