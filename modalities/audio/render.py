"""Notes rendered to audio offline with a General MIDI SoundFont: the TimGM6mb SoundFont that pretty_midi ships, played
by tinysoundfont's synthesiser (install it with --no-deps; no audio device, no system library). Rendering is
deterministic and sample-aligned: the same notes give the same samples, and every instrument starts each note at the
same sample, so renders of one score by two instruments are pairs for timbre transfer.

The built-in paired corpus renders music21's Bach chorales: each chorale's four voices, at a tempo and loudness drawn
per chorale from a seeded RNG (the same for every arrangement), with one instrument per voice (an arrangement), split
by chorale name (core.utils.split_of), cached with a manifest of settings and content hashes.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from diffsuite.core.utils import atomic_path, atomic_write_json, cache_dir, sha256_file, split_of

RENDER_VERSION = 1
PROGRAMS = {"piano": 0, "vibraphone": 11, "violin": 40, "strings": 48, "clarinet": 71}  # General MIDI, 0-based


@dataclass(frozen=True)
class NoteEvent:
    start: float  # seconds
    end: float
    pitch: int  # MIDI key
    velocity: int = 90


def soundfont_path() -> Path:
    import pretty_midi
    p = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    if not p.is_file():
        raise FileNotFoundError(f"the General MIDI SoundFont pretty_midi ships is missing: {p}")
    return p


def _channels(n: int) -> list[int]:
    """MIDI channels for n parts, skipping 9 (General MIDI drums)."""
    chans = [c for c in range(16) if c != 9]
    if n > len(chans):
        raise ValueError(f"render: at most {len(chans)} parts, got {n}")
    return chans[:n]


def render(parts: list[tuple[str, list[NoteEvent]]], sr: int = 16000, tail: float = 0.5,
           gain: float = -6.0) -> np.ndarray:
    """Mono float32 audio of the parts, each (instrument name, notes) on its own channel, `tail` seconds after the
    last note-off; note events fall on exact samples (offs before ons at the same sample)."""
    import tinysoundfont
    synth = tinysoundfont.Synth(gain=gain, samplerate=sr)
    sfid = synth.sfload(str(soundfont_path()))
    events = []
    for chan, (name, notes) in zip(_channels(len(parts)), parts):
        if name not in PROGRAMS:
            raise ValueError(f"render: unknown instrument {name!r}; valid: {sorted(PROGRAMS)}")
        synth.program_select(chan, sfid, 0, PROGRAMS[name])
        for n in notes:
            events.append((round(n.start * sr), 1, chan, n.pitch, n.velocity))
            events.append((max(round(n.end * sr), round(n.start * sr) + 1), 0, chan, n.pitch, 0))
    events.sort()
    end = (events[-1][0] if events else 0) + round(tail * sr)
    out, pos = [], 0
    for i, kind, chan, pitch, vel in events + [(end, -1, 0, 0, 0)]:
        if i > pos:
            out.append(np.frombuffer(synth.generate(i - pos), dtype=np.float32).reshape(-1, 2).mean(1))
            pos = i
        if kind == 1:
            synth.noteon(chan, pitch, vel)
        elif kind == 0:
            synth.noteoff(chan, pitch)
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def score_voices(score, qpm: float, velocity: int) -> list[list[NoteEvent]]:
    """A music21 score's parts as note lists in seconds (ties merged), the pickup bar padded to a whole bar."""
    from diffsuite.modalities.music.data import pickup_ql  # the music modality's pickup rule, deliberately reused
    pad = pickup_ql(score)
    sec = 60.0 / qpm
    voices = []
    for part in score.parts:
        notes = []
        for n in part.stripTies().flatten().notes:
            s = float(Fraction(n.offset).limit_denominator(96)) + pad
            e = s + float(Fraction(n.quarterLength).limit_denominator(96))
            notes.extend(NoteEvent(s * sec, e * sec, p.midi, velocity) for p in n.pitches)
        voices.append(notes)
    return voices


def chorale_settings(names: list[str], tempo: tuple, velocity: tuple, seed: int) -> dict:
    """Per chorale: a tempo (quarter notes per minute) and a velocity, drawn from a seeded RNG by name."""
    out = {}
    for name in names:
        rng = random.Random(f"{seed}:{name}")
        out[name] = {"qpm": rng.uniform(*tempo), "velocity": rng.randint(*velocity)}
    return out


def render_corpus(arrangement: tuple, limit: int = 60, sr: int = 16000, tempo: tuple = (80.0, 100.0),
                  velocity: tuple = (70, 100), seed: int = 0) -> dict:
    """The first `limit` four-voice Bach chorales of music21's corpus rendered with one instrument per voice
    (`arrangement`, soprano first; one name means every voice), cached: {name: int16 audio}, plus 'splits'."""
    from music21 import converter
    from diffsuite.modalities.music.data import score_paths  # music21's corpus paths, as the music modality reads them
    arrangement = tuple(arrangement) * 4 if len(arrangement) == 1 else tuple(arrangement)
    settings = dict(version=RENDER_VERSION, arrangement=arrangement, limit=limit, sr=sr, tempo=list(tempo),
                    velocity=list(velocity), seed=seed, soundfont=soundfont_path().name)
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir("timbre", f"{'-'.join(arrangement)}-{key}")
    f, manifest = folder / "audio.npz", folder / "manifest.json"
    if not (f.exists() and manifest.exists()):
        clips, skipped = {}, []
        paths = [p for p in score_paths("bach") if p.suffix in (".mxl", ".xml", ".krn")]
        for p in paths:
            if len(clips) >= limit:
                break
            score = converter.parse(p)
            if len(score.parts) != 4:
                skipped.append(p.name)
                continue
            s = chorale_settings([p.name], tempo, velocity, seed)[p.name]
            voices = score_voices(score, s["qpm"], s["velocity"])
            audio = render(list(zip(arrangement, voices)), sr)
            clips[p.name] = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)
        with atomic_path(f) as tmp:
            np.savez(tmp, **clips)
        atomic_write_json(manifest, {"settings": settings, "clips": len(clips),
                                     "splits": {n: split_of(n) for n in clips}, "sha256": sha256_file(f)})
    with np.load(f, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    return out


def corpus_wavs(arrangement: tuple, **kw) -> Path:
    """The rendered corpus (render_corpus, same arguments) as a folder of 16-bit WAVs, one per chorale named
    <chorale>.wav, written once beside the cache (a vocoder trains on it like any audio folder)."""
    import soundfile as sf
    clips = render_corpus(arrangement, **kw)
    folder = cache_dir("timbre", "wav-" + hashlib.sha1(json.dumps([list(arrangement), sorted(kw.items())],
                                                                  default=str).encode()).hexdigest()[:12])
    done = folder / "manifest.json"
    if not done.exists():
        for name, y in clips.items():
            with atomic_path(folder / f"{name}.wav") as tmp:
                sf.write(str(tmp), y, kw.get("sr", 16000), subtype="PCM_16")
        atomic_write_json(done, {"arrangement": list(arrangement), "clips": sorted(clips)})
    return folder
