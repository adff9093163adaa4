"""Timbre transfer (DiffTransfer) on the held-out chorales, against the target rendering, with the identity (the source
recording as the output) and the oracle (the target's own log-mel through the same vocoder) as bounds:

- log-mel L1 of the output spectrogram (natural-log units); target: at most 50% of the identity's;
- multi-pitch Jaccard distance of the vocoded output to the target (Music-STAR's; essentia's MultiPitchMelodia, and
  the CQT harmonic-sum estimator beside it); target: at most 1.1x the oracle's;
- instrument identity: the share of output patches a CNN trained on rendered spectrograms (and on noise, a class of
  its own) assigns to the target arrangement (target: at least 95%), and the Frechet distance in its features
  ("classifier-FD", not FAD); an untrained network of the same recipe is the floor beside the identity;
- speed: seconds of audio per second of compute at 20 and at 10 DDIM steps (the diffusion alone, and with the vocoder).

    python benchmarks/timbre.py RUN [--vocoder VOCODER_RUN] [--chorales 6] [--seconds 20] [--out clarinet_to_strings]

Writes benchmarks/results/timbre_<out>.json and timbre_<out>.png (source / output / target spectrograms).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
SINGLES = [("piano",), ("vibraphone",), ("violin",), ("strings",), ("clarinet",)]


def arrangements(data) -> tuple[list[tuple], int]:
    """The classifier's classes (the five instruments, plus the run's mixtures) and the target's index."""
    classes = list(SINGLES)
    for a in (tuple(data.source_instruments), tuple(data.target_instruments)):
        if a not in classes:
            classes.append(a)
    return classes, classes.index(tuple(data.target_instruments))


def vocoder_fn(path):
    """Griffin-Lim, or a DiffWave checkpoint in the difftransfer convention: log-mel (128, F) -> audio."""
    from diffsuite.modalities.audio.timbre import griffin_lim, vocode_with
    if path is None:
        return "griffin-lim", griffin_lim
    from diffsuite.recipes.run import load
    voc = load(path)
    return f"DiffWave {voc.checkpoint}", lambda m: vocode_with(voc, m, 0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--vocoder", default=None, help="a DiffWave run in the difftransfer convention (default Griffin-Lim)")
    ap.add_argument("--chorales", type=int, default=6, help="held-out chorales to score (the first n of the split)")
    ap.add_argument("--seconds", type=float, default=20.0, help="the first seconds of each chorale")
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 10])
    ap.add_argument("--split", default="test", choices=("val", "test"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="results/timbre_<out>.json (default: the run's recipe name)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffsuite.core.precision import probe_machine
    from diffsuite.modalities.audio import timbre_metrics as M
    from diffsuite.modalities.audio.timbre import _audio_pairs, denormalise, log_mel, normalise, transfer_mel
    from diffsuite.modalities.image.metrics import feature_stats, frechet_distance
    from diffsuite.recipes.run import build_model, load
    loaded = load(args.run)
    torch.manual_seed(0)
    untrained = SimpleNamespace(recipe=loaded.recipe, denoiser=build_model(loaded.task, loaded.recipe, for_sampling=True).eval())
    d = loaded.recipe.data
    classes, k_target = arrangements(d)
    clf, clf_info = M.instrument_classifier(classes, limit=d.limit)
    voc_name, vocode = vocoder_fn(args.vocoder)
    pairs = _audio_pairs(d, args.split)[: args.chorales]
    L = int(args.seconds * 16000)
    clamp = lambda m: denormalise(normalise(m))  # noqa: E731 - the representation's range, as the model sees it
    feats = {}  # row -> classifier features of every patch, over all chorales ("target": the target's own)
    per, audio_seconds, first = [], 0.0, None
    for name, y, z in pairs:
        y, z = y[:L], z[:L]
        audio_seconds += len(y) / 16000
        tgt = clamp(log_mel(z))
        P_t = {m: M.multipitch(z, method=m)[0] for m in ("essentia", "cqt")}
        rows = {"identity": {"mel": clamp(log_mel(y)), "audio": y}, "oracle": {"mel": tgt, "audio": vocode(tgt)}}
        _, out, _ = transfer_mel(untrained, y, steps=args.steps[0], seed=0)
        rows[f"untrained model, DDIM {args.steps[0]}"] = {"mel": out, "audio": vocode(out)}
        for s in args.steps:
            t0 = time.perf_counter()
            _, out, _ = transfer_mel(loaded, y, steps=s, seed=0)
            t1 = time.perf_counter()
            rows[f"output, DDIM {s}"] = {"mel": out, "audio": vocode(out), "secs_model": t1 - t0,
                                         "secs_voc": time.perf_counter() - t0}
        rec = {"chorale": name, "seconds": len(y) / 16000}
        for key, r in {**rows, "target": {"mel": tgt}}.items():
            x = M.patches(normalise(r["mel"]))
            with torch.no_grad():
                f = clf.features(M._pool(x))
            feats.setdefault(key, []).append(f.numpy())
            if key == "target":
                continue
            logits = clf.head(f)
            rec[key] = {"logmel_l1": M.logmel_l1(r["mel"], tgt),
                        "pitch_jaccard": M.pitch_jaccard(M.multipitch(r["audio"], method="essentia")[0], P_t["essentia"]),
                        "pitch_jaccard_cqt": M.pitch_jaccard(M.multipitch(r["audio"], method="cqt")[0], P_t["cqt"]),
                        "target_share": float((logits.argmax(1) == k_target).float().mean()), "patches": len(x),
                        **{k: r[k] for k in ("secs_model", "secs_voc") if k in r}}
        per.append(rec)
        if first is None:
            first = (name, {k: r["mel"] for k, r in rows.items()}, tgt)
        print(json.dumps({k: (v if not isinstance(v, dict) else {a: round(b, 4) for a, b in v.items()})
                          for k, v in rec.items()}))
    keys = [k for k in per[0] if isinstance(per[0][k], dict)]
    summary = {}
    tf = np.concatenate(feats["target"])
    for key in keys:
        w = np.array([p["seconds"] for p in per])
        row = {m: float(np.average([p[key][m] for p in per], weights=w))
               for m in ("logmel_l1", "pitch_jaccard", "pitch_jaccard_cqt", "target_share")}
        row["classifier_fd"] = frechet_distance(*feature_stats(np.concatenate(feats[key])), *feature_stats(tf))
        if "secs_model" in per[0][key]:
            row["audio_s_per_s_model"] = audio_seconds / sum(p[key]["secs_model"] for p in per)
            row["audio_s_per_s_with_vocoder"] = audio_seconds / sum(p[key]["secs_voc"] for p in per)
        summary[key] = row
    ident, oracle = summary["identity"], summary["oracle"]
    for key in keys:
        summary[key]["l1_vs_identity"] = summary[key]["logmel_l1"] / ident["logmel_l1"]
        summary[key]["pitch_vs_oracle"] = summary[key]["pitch_jaccard"] / oracle["pitch_jaccard"]
        summary[key]["pitch_cqt_vs_oracle"] = summary[key]["pitch_jaccard_cqt"] / oracle["pitch_jaccard_cqt"]
    m = probe_machine("cpu")
    res = {"checkpoint": str(loaded.checkpoint), "step": loaded.step, "recipe": loaded.recipe.name,
           "args": vars(args), "vocoder": voc_name, "split": args.split, "audio_seconds": audio_seconds,
           "machine": {"cpu": m.device_name, "cpu_capability": m.cpu_capability, "threads": args.threads,
                       "torch": torch.__version__},
           "classifier": {k: clf_info[k] for k in ("classes", "test_accuracy", "train_patches", "test_patches")},
           "target_class": "+".join(classes[k_target]), "summary": summary, "per_chorale": per}
    out = args.out or loaded.recipe.name.removeprefix("timbre_")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"timbre_{out}.json"
    path.write_text(json.dumps(res, indent=1))
    from diffsuite.modalities.audio.task import save_spectrograms
    name, mels, tgt = first
    panels = [(f"{k} ({name})", v[:, :500].numpy()) for k, v in mels.items() if k != "oracle"]
    save_spectrograms(path.with_suffix(".png"), panels + [("target", tgt[:, :500].numpy())], 16000, 320)
    print(json.dumps(summary, indent=1))
    print(f"written {path}")
    return res


if __name__ == "__main__":
    main()
