"""Music datasets: a MIDI folder (pretty_midi) and the built-in music21 corpus collections (Bach chorales by default).

Pieces become RollPieces; windows of `seg_len` steps start on bar lines (one-bar hop); the split is by
piece (a stable hash of the piece's name), never by window. Built-in collections are parsed once into
the cache (core.utils.cache_dir) with a manifest of settings and content hashes.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from diffsuite.core.utils import atomic_write_bytes, atomic_write_json, cache_dir, sha256_file, split_of

from . import chords
from .roll import Note, RollPiece, clean_window, load_midi, notes_to_roll, segments, to_model

CACHE_VERSION = 1
SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------- MIDI folder

def load_midi_folder(folder, steps_per_beat: int = 4, n_pitch: int = 128, pitch_lo: int = 0) -> list[RollPiece]:
    """Every *.mid / *.midi under folder; corrupt or empty files are skipped with a warning naming each and a count."""
    pieces, skipped, n = _read_midi_folder(folder, steps_per_beat, n_pitch, pitch_lo)
    _warn_skipped(folder, skipped, n)
    return pieces


def _read_midi_folder(folder, steps_per_beat, n_pitch, pitch_lo) -> tuple[list[RollPiece], list[list[str]], int]:
    """(pieces, [[file, why it was skipped]], number of MIDI files); no readable piece at all is an error."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    if not paths:
        raise FileNotFoundError(f"no .mid/.midi files under {folder}")
    pieces, skipped = [], []
    for p in tqdm(paths, desc="midi", leave=False):
        try:
            piece = load_midi(p, steps_per_beat, 0.0, n_pitch, pitch_lo)
        except Exception as e:  # pretty_midi / mido raise many types on corrupt files
            skipped.append([str(p), f"corrupt: {type(e).__name__}: {e}"])
            continue
        if piece.roll[0].sum() == 0:
            skipped.append([str(p), "empty: no notes in pitch range"])
            continue
        piece.meta["name"] = str(p.relative_to(folder))
        pieces.append(piece)
    if not pieces:
        _warn_skipped(folder, skipped, len(paths))
        raise ValueError(f"none of the {len(paths)} MIDI files under {folder} could be used (each is named in a "
                         "warning above)")
    return pieces, skipped, len(paths)


def _warn_skipped(folder, skipped: list, n: int) -> None:
    for path, why in skipped:
        warnings.warn(f"skipping MIDI file {path}: {why}")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} of {n} MIDI files under {folder}")


# ---------------------------------------------------------------- music21 corpus

def score_paths(collection: str) -> list[Path]:
    from music21 import corpus
    paths = sorted(Path(p) for p in corpus.getComposer(collection))
    if not paths:
        raise ValueError(f"music21 corpus collection {collection!r} is empty; try 'bach', 'joplin', 'essenFolksong'")
    return paths


def pickup_ql(score) -> float:
    """Quarter lengths missing from the first bar (its left padding), so bar lines can be aligned."""
    part = score.parts[0] if score.parts else score
    measures = part.getElementsByClass("Measure")
    return float(measures[0].paddingLeft) if len(measures) else 0.0


def score_to_piece(score, steps_per_beat: int, n_pitch: int, pitch_lo: int) -> RollPiece:
    """A music21 score -> RollPiece from note offsets and durations (ties merged), pickup padded to a full bar."""
    ts = score.recurse().getElementsByClass("TimeSignature")
    num, den = (ts[0].numerator, ts[0].denominator) if len(ts) else (4, 4)
    pad_ql = pickup_ql(score)
    notes, snapped = [], 0
    for n in score.stripTies().flatten().notes:
        s = Fraction(n.offset + pad_ql).limit_denominator(96) * steps_per_beat
        e = s + Fraction(n.quarterLength).limit_denominator(96) * steps_per_beat
        snapped += s.denominator != 1 or e.denominator != 1
        s_i, e_i = round(s), round(e)
        notes.extend(Note(p.midi, s_i, max(e_i - s_i, 1)) for p in n.pitches)
    spbar = int(round(num * 4 / den * steps_per_beat))
    T = int(np.ceil(max((n.start + n.length for n in notes), default=0) / spbar) * spbar)
    roll, clipped = notes_to_roll(notes, T, n_pitch, pitch_lo)
    return RollPiece(roll, steps_per_beat, num * 4 / den, (num, den), 100.0, int(round(pad_ql * steps_per_beat)),
                     pitch_lo, snapped, clipped)


def _parse_collection(paths, steps_per_beat, n_pitch, pitch_lo, metres) -> list[RollPiece]:
    from music21 import converter
    pieces, skipped = [], []
    for p in tqdm(paths, desc="music21 corpus", leave=False):
        try:
            piece = score_to_piece(converter.parse(p), steps_per_beat, n_pitch, pitch_lo)
        except Exception as e:
            skipped.append(p)
            warnings.warn(f"skipping unreadable score {p}: {type(e).__name__}: {e}")
            continue
        if metres and "%d/%d" % piece.time_signature not in metres:
            continue  # kept out by design (metre filter), not an error
        piece.meta["name"] = p.name
        pieces.append(piece)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} of {len(paths)} scores")
    return pieces


def _save_pieces(path: Path, pieces: list[RollPiece]) -> None:
    rolls = {f"r{i}": pc.roll for i, pc in enumerate(pieces)}
    import io
    buf = io.BytesIO()
    np.savez_compressed(buf, **rolls)
    atomic_write_bytes(path.with_suffix(".npz"), buf.getvalue())
    meta = [{k: getattr(pc, k) for k in ("steps_per_beat", "beats_per_bar", "time_signature", "qpm", "pad",
                                          "pitch_lo", "n_snapped", "n_clipped", "meta")} for pc in pieces]
    atomic_write_json(path.with_suffix(".json"), meta)


def _load_pieces(path: Path) -> list[RollPiece]:
    meta = json.loads(path.with_suffix(".json").read_text())
    with np.load(path.with_suffix(".npz")) as z:
        return [RollPiece(z[f"r{i}"], **{**m, "time_signature": tuple(m["time_signature"])}) for i, m in enumerate(meta)]


def corpus_pieces(collection: str = "bach", steps_per_beat: int = 4, n_pitch: int = 64, pitch_lo: int = 32,
                  metres=("3/4", "4/4"), limit: Optional[int] = None) -> list[RollPiece]:
    """A bundled music21 collection as RollPieces, built on first use into the cache with a manifest."""
    settings = dict(version=CACHE_VERSION, collection=collection, steps_per_beat=steps_per_beat, n_pitch=n_pitch,
                    pitch_lo=pitch_lo, metres=list(metres or []), limit=limit)
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    base = cache_dir("music", f"{collection}-{key}") / "pieces"
    if base.with_suffix(".npz").exists() and base.with_suffix(".json").exists():
        return _load_pieces(base)
    paths = score_paths(collection)[:limit]
    pieces = _parse_collection(paths, steps_per_beat, n_pitch, pitch_lo, metres)
    _save_pieces(base, pieces)
    atomic_write_json(base.parent / "manifest.json", {"settings": settings, "n_pieces": len(pieces),
                                                      "n_scores": len(paths),
                                                      "sha256": {f.name: sha256_file(f) for f in
                                                                 (base.with_suffix(".npz"), base.with_suffix(".json"))}})
    return pieces


def cached_midi_folder(folder, steps_per_beat: int = 4, n_pitch: int = 128, pitch_lo: int = 0) -> list[RollPiece]:
    """load_midi_folder, cached on disk under a key of the settings and every file's name, size and mtime."""
    files = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in Path(folder).rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    settings = dict(version=CACHE_VERSION, folder=str(Path(folder).resolve()), steps_per_beat=steps_per_beat,
                    n_pitch=n_pitch, pitch_lo=pitch_lo)
    key = hashlib.sha1(json.dumps([settings, files]).encode()).hexdigest()[:12]
    base = cache_dir("music", f"midi-{key}") / "pieces"
    manifest = base.parent / "manifest.json"
    if base.with_suffix(".npz").exists() and base.with_suffix(".json").exists() and manifest.exists():
        m = json.loads(manifest.read_text())
        _warn_skipped(folder, m.get("skipped", []), len(files))  # the warnings of the first read, every time
        return _load_pieces(base)
    pieces, skipped, n = _read_midi_folder(folder, steps_per_beat, n_pitch, pitch_lo)
    _warn_skipped(folder, skipped, n)
    _save_pieces(base, pieces)
    atomic_write_json(manifest, {"settings": settings, "n_pieces": len(pieces), "n_files": len(files),
                                 "skipped": skipped,
                                 "sha256": {f.name: sha256_file(f) for f in (base.with_suffix(".npz"),
                                                                             base.with_suffix(".json"))}})
    return pieces


# ---------------------------------------------------------------- windows + augmentation

def transpose(roll: np.ndarray, k: int) -> np.ndarray:
    """Shift a (2, P, T) roll by k semitones; pitches pushed out of range are dropped, never wrapped."""
    out = np.zeros_like(roll)
    P = roll.shape[1]
    if k >= 0:
        out[:, k:] = roll[:, :P - k]
    else:
        out[:, :P + k] = roll[:, -k:]
    return out


def allowed_shifts(roll: np.ndarray, max_shift: int) -> list[int]:
    """Transpositions in [-max_shift, max_shift] that keep every note of the roll inside the pitch range."""
    used = np.nonzero(roll.any(axis=(0, 2)))[0]
    if not len(used):
        return [0]
    lo, hi = -int(used.min()), roll.shape[1] - 1 - int(used.max())
    return list(range(max(-max_shift, lo), min(max_shift, hi) + 1))


class RollWindows(torch.utils.data.Dataset):
    """Windows of seg_len steps at a one-bar hop over the given pieces; items {"x0": (2, T, P), "cond": (beats, 36)}."""

    def __init__(self, pieces: list[RollPiece], seg_len: int = 64, transpose_max: int = 0, min_notes: int = 1):
        self.pieces, self.seg_len, self.transpose_max = pieces, seg_len, transpose_max
        self.index = []  # (piece index, start step)
        for i, pc in enumerate(pieces):
            for s, w in segments(pc.roll, seg_len, pc.steps_per_bar):
                if w[0].sum() + w[1, :, 0].sum() >= min_notes:
                    self.index.append((i, s))
        if not self.index:
            raise ValueError(f"no windows of {seg_len} steps in {len(pieces)} pieces")

    def __len__(self):
        return len(self.index)

    def window(self, j: int) -> np.ndarray:
        i, s = self.index[j]
        return clean_window(segments(self.pieces[i].roll[:, :, s:s + self.seg_len], self.seg_len, self.seg_len)[0][1])

    def __getitem__(self, j: int):
        w = self.window(j)
        if self.transpose_max:  # drawn from torch's global RNG, which the trainer seeds per (seed, step, item)
            shifts = allowed_shifts(w, self.transpose_max)
            w = transpose(w, shifts[int(torch.randint(len(shifts), ()))])
        pc = self.pieces[self.index[j][0]]
        c = chords.extract(w, pc.pitch_lo, pc.steps_per_beat)
        return {"x0": to_model(w), "cond": torch.from_numpy(c)}


def split_pieces(pieces: list[RollPiece], split: str, val_fraction: float = 0.1, test_fraction: float = 0.1):
    """The pieces of one split (by piece name)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: valid: {SPLITS}")
    return [p for p in pieces if split_of(p.meta["name"], val_fraction, test_fraction) == split]
