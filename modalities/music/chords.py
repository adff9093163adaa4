"""Per-beat chords (root, chroma, bass) from rolls, a chord-symbol parser and chord accuracy.

The chord condition follows Polyffusion's chord format (Min et al. 2023): per beat a 36-vector of
root one-hot (12), chroma (12) and bass one-hot (12). A beat with no sounding note is all zeros.
The root is the template root (major, minor, diminished, augmented, dominant-7 / other sevenths)
that best matches the chroma, ties broken toward the bass.
"""
from __future__ import annotations

import re

import numpy as np

from .roll import ONSET, SUSTAIN

CHORD_DIM = 36
NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
_FLAT = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#", "Cb": "B", "Fb": "E", "E#": "F", "B#": "C"}
QUALITIES = {  # intervals above the root
    "": (0, 4, 7), "maj": (0, 4, 7), "m": (0, 3, 7), "min": (0, 3, 7), "dim": (0, 3, 6), "aug": (0, 4, 8),
    "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11), "m7": (0, 3, 7, 10), "dim7": (0, 3, 6, 9), "m7b5": (0, 3, 6, 10),
    "sus4": (0, 5, 7), "sus2": (0, 2, 7),
}
_TEMPLATES = [np.isin(np.arange(12), q).astype(float) for q in
              [(0, 4, 7), (0, 3, 7), (0, 3, 6), (0, 4, 8), (0, 4, 7, 10), (0, 3, 7, 10), (0, 3, 6, 10)]]


def sounding(roll: np.ndarray) -> np.ndarray:
    """(P, T) boolean: a note sounds at (p, t) if it has an onset or a sustain there."""
    return (roll[ONSET] > 0) | (roll[SUSTAIN] > 0)


def chroma_bass(roll: np.ndarray, pitch_lo: int, steps_per_beat: int) -> tuple[np.ndarray, np.ndarray]:
    """Per beat: chroma (n_beats, 12) of every pitch sounding in the beat, and bass pitch class (-1 if silent)."""
    on = sounding(roll)
    P, T = on.shape
    n = T // steps_per_beat
    active = on[:, :n * steps_per_beat].reshape(P, n, steps_per_beat).any(axis=2)  # (P, n_beats)
    pc = np.eye(12)[(np.arange(P) + pitch_lo) % 12]  # (P, 12)
    chroma = (active.T.astype(float) @ pc > 0).astype(float)
    lowest = np.argmax(active, axis=0)
    bass = np.where(active.any(axis=0), (lowest + pitch_lo) % 12, -1)
    return chroma, bass


_ROOTED = np.stack([np.roll(t, r) for r in range(12) for t in _TEMPLATES])  # (12 roots x 7 templates, 12), root-major
_ROOT_OF_ROW = np.repeat(np.arange(12), len(_TEMPLATES))


def chords_of(chroma: np.ndarray, bass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per beat, (root, template index) of the rooted template that best matches the chroma (matches - misses -
    extras / 2); bass wins ties."""
    t = _ROOTED[None]  # (1, R, 12)
    c = chroma[:, None, :]  # (n, 1, 12)
    score = (t * c).sum(-1) - (t * (1 - c)).sum(-1) - 0.5 * ((1 - t) * c).sum(-1)
    score = score + 0.1 * (_ROOT_OF_ROW[None] == bass[:, None])
    best = np.argmax(score, axis=1)
    return _ROOT_OF_ROW[best], best % len(_TEMPLATES)


def roots_of(chroma: np.ndarray, bass: np.ndarray) -> np.ndarray:
    """Per beat, the root whose template best matches the chroma (see chords_of)."""
    return chords_of(chroma, bass)[0]


def root_of(chroma: np.ndarray, bass: int) -> int:
    """The root of one beat's chroma (see roots_of)."""
    return int(roots_of(chroma[None], np.array([bass]))[0])


def encode(chroma: np.ndarray, bass: np.ndarray, root: np.ndarray | None = None) -> np.ndarray:
    """(n_beats, 36) float32: root one-hot, chroma, bass one-hot (zeros for silent beats)."""
    n = len(chroma)
    out = np.zeros((n, CHORD_DIM), dtype=np.float32)
    root = roots_of(chroma, bass) if root is None else np.asarray(root)
    live = np.nonzero(bass >= 0)[0]
    out[live, root[live]] = 1
    out[live, 12:24] = chroma[live]
    out[live, 24 + bass[live]] = 1
    return out


def extract(roll: np.ndarray, pitch_lo: int, steps_per_beat: int) -> np.ndarray:
    """The chord condition of a roll (2, P, T): (T // steps_per_beat, 36)."""
    chroma, bass = chroma_bass(roll, pitch_lo, steps_per_beat)
    return encode(chroma, bass)


def parse_symbol(sym: str) -> tuple[int, np.ndarray, int]:
    """'Am7', 'F#dim', 'C/E', 'Bbmaj7' -> (root, chroma (12,), bass)."""
    m = re.fullmatch(r"([A-G][#b]?)([A-Za-z0-9#]*)(?:/([A-G][#b]?))?", sym.strip())
    if not m:
        raise ValueError(f"chord symbol {sym!r}: expected ROOT[QUALITY][/BASS], e.g. C, Am, G7, F#dim, C/E")
    root_name, qual, bass_name = m.groups()
    if qual not in QUALITIES:
        raise ValueError(f"chord symbol {sym!r}: unknown quality {qual!r}; valid: {sorted(QUALITIES)}")
    root = NAMES.index(_FLAT.get(root_name, root_name))
    chroma = np.zeros(12)
    chroma[[(root + i) % 12 for i in QUALITIES[qual]]] = 1
    bass = NAMES.index(_FLAT.get(bass_name, bass_name)) if bass_name else root
    return root, chroma, bass


def parse_progression(text: str, n_beats: int, beats_per_chord: int | None = None) -> np.ndarray:
    """'C G Am F' -> (n_beats, 36); each chord lasts beats_per_chord beats (default: spread evenly), then repeats."""
    syms = text.split()
    if not syms:
        raise ValueError("empty chord progression: expected symbols like 'C G Am F'")
    per = beats_per_chord or max(n_beats // len(syms), 1)
    if len(syms) * per > n_beats:
        raise ValueError(f"{len(syms)} chords of {per} beat(s) each need {len(syms) * per} beats, but the window has "
                         f"{n_beats}: give at most {n_beats // per} chords" + ("" if beats_per_chord is None else
                                                                              " or a smaller --beats-per-chord"))
    parsed = [parse_symbol(s) for s in syms]
    rows = [parsed[(b // per) % len(parsed)] for b in range(n_beats)]
    return encode(np.stack([r[1] for r in rows]), np.array([r[2] for r in rows]), np.array([r[0] for r in rows]))


def accuracy(roll: np.ndarray, target: np.ndarray, pitch_lo: int, steps_per_beat: int) -> float:
    """Fraction of target beats whose sounding pitch classes all belong to the target chroma and include its root."""
    chroma, _ = chroma_bass(roll, pitch_lo, steps_per_beat)
    hits, n = 0, 0
    for b in range(min(len(chroma), len(target))):
        tc = target[b, 12:24]
        if tc.sum() == 0:
            continue
        n += 1
        root = int(target[b, :12].argmax())
        hits += bool(chroma[b].sum() > 0 and chroma[b][tc == 0].sum() == 0 and chroma[b][root] == 1)
    return hits / n if n else float("nan")


# Triad classes for chord recognition (`diffsuite classify` on a music model): class = 3 root + quality.
TRIADS = {"": (0, 4, 7), "m": (0, 3, 7), "dim": (0, 3, 6)}  # major, minor, diminished
_TRIAD_OF_TEMPLATE = np.array([0, 1, 2, 0, 0, 1, 2])  # maj, min, dim, aug, 7, m7, m7b5 -> major, minor, diminished


def triad_names() -> list[str]:
    """The 36 triad classes' names, class 3 root + quality: C, Cm, Cdim, C#, ..."""
    return [f"{NAMES[r]}{q}" for r in range(12) for q in TRIADS]


def triad_class(chroma: np.ndarray, bass: int) -> int:
    """The extractor's chord of one beat as a triad class (sevenths and augmented count as their triad), -1 if silent."""
    if bass < 0:
        return -1
    root, template = chords_of(chroma[None], np.array([bass]))
    return int(3 * root[0] + _TRIAD_OF_TEMPLATE[template[0]])


def triad_conditions() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every triad in root position and both inversions as one beat's chord condition: rows (108, 36), the class of
    each row (108,), and the rows' names (C, C/E, C/G, ...)."""
    rows, classes, names = [], [], []
    for c, name in enumerate(triad_names()):
        root, intervals = c // 3, list(TRIADS.values())[c % 3]
        chroma = np.isin(np.arange(12), [(root + i) % 12 for i in intervals]).astype(float)
        for inv, i in enumerate(intervals):
            bass = (root + i) % 12
            rows.append(encode(chroma[None], np.array([bass]), np.array([root]))[0])
            classes.append(c)
            names.append(name if inv == 0 else f"{name}/{NAMES[bass]}")
    return np.stack(rows), np.array(classes), names


def bass_rule_class(chroma: np.ndarray, bass: int) -> int:
    """A note-reading recogniser that assumes root position: the bass is the root; a major third above it makes the
    chord major, a minor third with a diminished fifth diminished, a minor third minor; no third: major."""
    if bass < 0:
        return -1
    has = lambda k: bool(chroma[(bass + k) % 12])  # noqa: E731
    q = 0 if has(4) else (2 if has(3) and has(6) and not has(7) else (1 if has(3) else 0))
    return 3 * bass + q
