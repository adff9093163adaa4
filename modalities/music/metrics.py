"""Musical metrics on rolls (2, P, T): muspy's per-piece statistics (Dong et al. 2020, written here), Yang & Lerch
(2020) set-level distances with KDE overlapping area and KL, a memorisation distance, an independent-notes baseline
and the framewise consistency and variance of Mittal et al. (2021).
"""
from __future__ import annotations

import numpy as np

from .chords import sounding
from .roll import Note, integrity_rate, notes_to_roll, roll_to_notes

_MAJOR = np.isin(np.arange(12), (0, 2, 4, 5, 7, 9, 11))
_MINOR = np.isin(np.arange(12), (0, 2, 3, 5, 7, 8, 10))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum() if counts.sum() else np.array([1.0])
    return float(-(p * np.log2(p)).sum())


def pitch_stats(notes: list[Note]) -> dict:
    """muspy: pitch_range, n_pitches_used, n_pitch_classes_used, pitch_entropy, pitch_class_entropy, scale_consistency."""
    if not notes:
        return dict(pitch_range=0, n_pitches_used=0, n_pitch_classes_used=0, pitch_entropy=0.0,
                    pitch_class_entropy=0.0, scale_consistency=float("nan"))
    p = np.array([n.pitch for n in notes])
    pc_counts = np.bincount(p % 12, minlength=12)
    scale = max(float((np.roll(s, k) * pc_counts).sum() / len(p)) for s in (_MAJOR, _MINOR) for k in range(12))
    return dict(pitch_range=int(p.max() - p.min()), n_pitches_used=len(set(p)), n_pitch_classes_used=len(set(p % 12)),
                pitch_entropy=_entropy(np.bincount(p, minlength=128)), pitch_class_entropy=_entropy(pc_counts),
                scale_consistency=scale)


def polyphony(roll: np.ndarray) -> float:
    """muspy: mean number of pitches sounding over the time steps where at least one sounds."""
    k = sounding(roll).sum(axis=0)
    return float(k[k > 0].mean()) if (k > 0).any() else 0.0


def polyphony_rate(roll: np.ndarray, threshold: int = 2) -> float:
    """muspy: fraction of all time steps with at least `threshold` pitches sounding."""
    return float((sounding(roll).sum(axis=0) >= threshold).mean())


def empty_beat_rate(roll: np.ndarray, steps_per_beat: int) -> float:
    """muspy: fraction of beats in which no note sounds."""
    on = sounding(roll).any(axis=0)
    n = len(on) // steps_per_beat
    return float(1 - on[:n * steps_per_beat].reshape(n, steps_per_beat).any(axis=1).mean()) if n else float("nan")


def groove_consistency(roll: np.ndarray, steps_per_bar: int) -> float:
    """muspy: 1 - mean Hamming distance between consecutive bars' onset patterns, over the bar length."""
    g = (roll[0] > 0).any(axis=0)
    n = len(g) // steps_per_bar
    if n < 2:
        return float("nan")
    bars = g[:n * steps_per_bar].reshape(n, steps_per_bar)
    return float(1 - (bars[1:] != bars[:-1]).sum(axis=1).mean() / steps_per_bar)


def piece_stats(roll: np.ndarray, pitch_lo: int = 0, steps_per_beat: int = 4, beats_per_bar: int = 4) -> dict:
    """Every per-piece statistic of one roll."""
    s = pitch_stats(roll_to_notes(roll, pitch_lo))
    s.update(polyphony=polyphony(roll), polyphony_rate=polyphony_rate(roll),
             empty_beat_rate=empty_beat_rate(roll, steps_per_beat),
             groove_consistency=groove_consistency(roll, steps_per_beat * beats_per_bar),
             integrity=integrity_rate(roll))
    return s


# ------------------------------------------------------------- Yang & Lerch (2020)

NLH_BINS = np.array([1, 2, 3, 4, 6, 8, 12, 16])  # note lengths in steps: 16th ... whole (at 4 steps per beat)


def features(roll: np.ndarray, pitch_lo: int = 0) -> dict:
    """Yang & Lerch (2020, Sec. 3): PC, PCH, PCTM, PR, PI, NC, IOI, NLH of one segment."""
    notes = roll_to_notes(roll, pitch_lo)
    p = np.array([n.pitch for n in notes], dtype=int)
    pch = np.bincount(p % 12, minlength=12).astype(float)
    pctm = np.zeros((12, 12))
    for a, b in zip(p[:-1], p[1:]):
        pctm[a % 12, b % 12] += 1
    onsets = np.unique([n.start for n in notes])
    lengths = np.array([n.length for n in notes])
    nlh = np.bincount(np.abs(lengths[:, None] - NLH_BINS[None]).argmin(axis=1), minlength=len(NLH_BINS)) \
        if len(lengths) else np.zeros(len(NLH_BINS))
    return {"PC": np.array([len(set(p))], float), "PCH": pch / max(pch.sum(), 1),
            "PCTM": (pctm / max(pctm.sum(), 1)).ravel(), "PR": np.array([np.ptp(p) if len(p) else 0], float),
            "PI": np.array([np.abs(np.diff(p)).mean() if len(p) > 1 else 0.0]), "NC": np.array([len(p)], float),
            "IOI": np.array([np.diff(onsets).mean() if len(onsets) > 1 else 0.0]),
            "NLH": nlh / max(nlh.sum(), 1)}


def _pairwise(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return np.sqrt(((A[:, None, :] - B[None, :, :]) ** 2).sum(-1))


def intra_set(F: np.ndarray) -> np.ndarray:
    """Distances between all distinct pairs of one set (Yang & Lerch 2020, Sec. 4)."""
    D = _pairwise(F, F)
    return D[np.triu_indices(len(F), 1)]


def inter_set(F: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Distances between every member of one set and every member of the other."""
    return _pairwise(F, G).ravel()


def _kde(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    from scipy.stats import gaussian_kde
    if np.ptp(x) < 1e-12:  # a point mass: a narrow Gaussian keeps the density defined
        x = x + np.random.default_rng(0).normal(0, 1e-3 * (abs(x.mean()) + 1), len(x))
    d = gaussian_kde(x)(grid)
    return d / np.trapezoid(d, grid)


def overlap_and_kl(a: np.ndarray, b: np.ndarray, n_grid: int = 1000) -> tuple[float, float]:
    """Overlapping area and KL(a || b) of the KDE densities of two distance samples (Yang & Lerch 2020, Sec. 4)."""
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    pad = 0.1 * (hi - lo + 1e-9)
    grid = np.linspace(lo - pad, hi + pad, n_grid)
    pa, pb = _kde(a, grid), _kde(b, grid)
    oa = float(np.trapezoid(np.minimum(pa, pb), grid))
    eps = 1e-10
    kl = float(np.trapezoid(pa * np.log((pa + eps) / (pb + eps)), grid))
    return oa, kl


def compare_sets(gen: list, ref: list, pitch_lo: int = 0) -> dict:
    """Per feature: OA and KL between the reference intra-set and the generated-vs-reference inter-set distances."""
    fg = [features(r, pitch_lo) for r in gen]
    fr = [features(r, pitch_lo) for r in ref]
    out = {}
    for k in fr[0]:
        G, R = np.stack([f[k] for f in fg]), np.stack([f[k] for f in fr])
        oa, kl = overlap_and_kl(intra_set(R), inter_set(G, R))
        out[k] = {"OA": oa, "KL": kl}
    out["mean_OA"] = float(np.mean([v["OA"] for v in out.values()]))
    return out


# ------------------------------------------------------------- reconstruction

def note_f1(pred: list, ref: list, offsets: bool = False) -> float:
    """Note F1 of rolls against reference rolls, pooled over all windows (transcription's note F1 on the grid): a
    note matches a reference note of the same pitch and onset step (and length, with offsets=True)."""
    key = (lambda n: (n.pitch, n.start, n.length)) if offsets else (lambda n: (n.pitch, n.start))
    hit = n_pred = n_ref = 0
    for a, b in zip(pred, ref, strict=True):
        A, B = {key(n) for n in roll_to_notes(a)}, {key(n) for n in roll_to_notes(b)}
        hit, n_pred, n_ref = hit + len(A & B), n_pred + len(A), n_ref + len(B)
    return 2 * hit / (n_pred + n_ref) if n_pred + n_ref else 1.0


# ------------------------------------------------------------- memorisation and baseline

def nearest_distance(queries: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Per query roll: the smallest Hamming distance (fraction of cells) to any training roll."""
    Q = queries.reshape(len(queries), -1).astype(np.float32)
    X = train.reshape(len(train), -1).astype(np.float32)
    out = np.empty(len(Q))
    for i in range(0, len(Q), 64):
        q = Q[i:i + 64]
        d = q.sum(1)[:, None] + X.sum(1)[None] - 2 * q @ X.T
        out[i:i + 64] = d.min(axis=1) / Q.shape[1]
    return out


def fit_independent(train: list, pitch_lo: int = 0) -> dict:
    """Training distributions of note count, pitch, duration and onset position, each on its own."""
    notes = [roll_to_notes(r, pitch_lo) for r in train]
    allnotes = [n for ns in notes for n in ns]
    return {"count": np.array([len(ns) for ns in notes]), "pitch": np.array([n.pitch for n in allnotes]),
            "length": np.array([n.length for n in allnotes]), "start": np.array([n.start for n in allnotes]),
            "shape": train[0].shape, "pitch_lo": pitch_lo}


def sample_independent(model: dict, n: int, seed: int = 0) -> np.ndarray:
    """Baseline: rolls whose notes draw count, pitch, length and onset independently from the training data."""
    rng = np.random.default_rng(seed)
    _, P, T = model["shape"]
    out = []
    for _ in range(n):
        k = int(rng.choice(model["count"]))
        notes = [Note(int(p), int(s), int(l)) for p, s, l in
                 zip(rng.choice(model["pitch"], k), rng.choice(model["start"], k), rng.choice(model["length"], k))]
        out.append(notes_to_roll(notes, T, P, model["pitch_lo"])[0])
    return np.stack(out) if out else np.zeros((0, 2, P, T), np.uint8)


# ------------------------------------------------------------- Mittal et al. (2021): framewise self-similarity

def gaussian_overlap(m1: float, s1: float, m2: float, s2: float) -> float:
    """Overlapping area of N(m1, s1^2) and N(m2, s2^2), in closed form from the points where the densities cross."""
    from scipy.stats import norm as N
    if abs(s1 - s2) < 1e-12 * max(s1, s2):
        return float(2 * N.cdf(-abs(m1 - m2) / (2 * s1)))
    if s1 > s2:
        m1, s1, m2, s2 = m2, s2, m1, s1  # density 1 is the narrow one
    a = 1 / (2 * s1 ** 2) - 1 / (2 * s2 ** 2)
    b = m2 / s2 ** 2 - m1 / s1 ** 2
    c = m1 ** 2 / (2 * s1 ** 2) - m2 ** 2 / (2 * s2 ** 2) - np.log(s2 / s1)
    x1, x2 = np.sort(np.roots([a, b, c]).real)  # the narrow density is the higher one between the crossings
    return float(N.cdf(x2, m2, s2) - N.cdf(x1, m2, s2) + N.cdf(x1, m1, s1) + N.sf(x2, m1, s1))


def frame_gaussians(roll: np.ndarray, pitch_lo: int = 0, frame: int = 32, hop: int = 16,
                    min_std: float = 0.5) -> list:
    """Per frame of `frame` steps at a `hop`: mean and std of the pitches and of the durations of the notes whose
    onsets lie in it (None for a frame without notes); stds are floored at min_std (a frame of equal values)."""
    notes = roll_to_notes(roll, pitch_lo)
    T = roll.shape[-1]
    out = []
    for s in range(0, T - frame + 1, hop):
        inside = [n for n in notes if s <= n.start < s + frame]
        if not inside:
            out.append(None)
            continue
        p = np.array([n.pitch for n in inside], float)
        d = np.array([n.length for n in inside], float)
        out.append({"pitch": (p.mean(), max(p.std(), min_std)), "duration": (d.mean(), max(d.std(), min_std))})
    return out


def framewise_overlaps(rolls, pitch_lo: int = 0, frame: int = 32, hop: int = 16) -> dict:
    """Overlapping areas of the Gaussians of adjacent frames, over all rolls: {'pitch': (n,), 'duration': (n,)}."""
    oa = {"pitch": [], "duration": []}
    for r in rolls:
        g = frame_gaussians(r, pitch_lo, frame, hop)
        for u, v in zip(g[:-1], g[1:]):
            if u is not None and v is not None:
                for k in oa:
                    oa[k].append(gaussian_overlap(*u[k], *v[k]))
    return {k: np.array(v) for k, v in oa.items()}


def consistency_variance(gen, ref, pitch_lo: int = 0, frame: int = 32, hop: int = 16) -> dict:
    """Mittal et al. (2021), framewise self-similarity of pitch and duration (secondary metric). Consistency =
    max(0, 1 - |mu_OA - mu_GT| / mu_GT) and Variance = max(0, 1 - |var_OA - var_GT| / var_GT), where mu and var are
    the mean and variance of the adjacent-frame overlaps of the generated set (OA) and of the reference set (GT)."""
    g, r = framewise_overlaps(gen, pitch_lo, frame, hop), framewise_overlaps(ref, pitch_lo, frame, hop)
    out = {}
    for k in ("pitch", "duration"):
        if not len(g[k]) or not len(r[k]):
            out[k] = {"consistency": float("nan"), "variance": float("nan")}
            continue
        mu_g, mu_r, var_g, var_r = g[k].mean(), r[k].mean(), g[k].var(), r[k].var()
        out[k] = {"consistency": float(max(0.0, 1 - abs(mu_g - mu_r) / mu_r)),
                  "variance": float(max(0.0, 1 - abs(var_g - var_r) / var_r)) if var_r > 0 else float("nan"),
                  "mean_overlap": float(mu_g), "var_overlap": float(var_g)}
    return out
