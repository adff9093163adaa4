"""Piano-roll codec in the Polyffusion style (Min et al. 2023): a 2-channel (onset, sustain) binary roll.

A roll is a uint8 array (2, P, T): channel 0 is 1 where a note starts, channel 1 is 1 on every later step
the note still sounds. Pitch index p is MIDI pitch `pitch_lo + p`; time step t is 1 / steps_per_beat of a
quarter note. Notes are decoded from onsets, so repeated notes of one pitch stay separate. Bar lines fall
at multiples of steps_per_bar: a pickup is padded in front (`pad` steps) and removed again on decode.
For the model the roll is transposed to (2, T, P) and mapped to [-1, 1] (`to_model` / `from_model`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pretty_midi
import torch

ONSET, SUSTAIN = 0, 1
N_PITCH = 128


@dataclass
class Note:
    """A note on the grid: pitch (MIDI), start step, length in steps (>= 1)."""

    pitch: int
    start: int
    length: int


@dataclass
class RollPiece:
    """A whole piece as a roll plus what is needed to write it back to MIDI exactly."""

    roll: np.ndarray  # (2, P, T) uint8
    steps_per_beat: int = 4
    beats_per_bar: float = 4.0  # in quarter notes (3/4 -> 3.0, 6/8 -> 3.0)
    time_signature: tuple = (4, 4)
    qpm: float = 120.0
    pad: int = 0  # steps prepended so bar lines fall at multiples of steps_per_bar (pickup)
    pitch_lo: int = 0
    n_snapped: int = 0  # notes whose start or end was off the grid and got snapped
    n_clipped: int = 0  # notes outside [pitch_lo, pitch_lo + P) that were dropped
    meta: dict = field(default_factory=dict)

    @property
    def steps_per_bar(self) -> int:
        return int(round(self.beats_per_bar * self.steps_per_beat))


def notes_to_roll(notes: list[Note], n_steps: int, n_pitch: int = N_PITCH, pitch_lo: int = 0) -> tuple[np.ndarray, int]:
    """Write grid notes into a (2, P, T) roll; a note is cut where the next note of its pitch starts. Returns (roll, n_clipped)."""
    roll = np.zeros((2, n_pitch, n_steps), dtype=np.uint8)
    clipped = 0
    for n in sorted(notes, key=lambda n: (n.start, n.pitch)):
        p = n.pitch - pitch_lo
        if not 0 <= p < n_pitch:
            clipped += 1
            continue
        end = min(n.start + max(n.length, 1), n_steps)
        roll[SUSTAIN, p, n.start + 1:end] = 1
        roll[ONSET, p, n.start] = 1
        roll[SUSTAIN, p, n.start] = 0
    return roll, clipped


def roll_to_notes(roll: np.ndarray, pitch_lo: int = 0) -> list[Note]:
    """Decode notes from onsets: a note runs from its onset through the following sustain steps. Orphan sustains are ignored."""
    onset, sustain = roll[ONSET] > 0, roll[SUSTAIN] > 0
    notes = []
    P, T = onset.shape
    for p, t in zip(*np.nonzero(onset)):
        end = t + 1
        while end < T and sustain[p, end] and not onset[p, end]:
            end += 1
        notes.append(Note(int(p) + pitch_lo, int(t), int(end - t)))
    return sorted(notes, key=lambda n: (n.start, n.pitch))


def integrity_rate(roll: np.ndarray) -> float:
    """Fraction of sustain steps that continue a note (onset or sustain on the step before): 1.0 for a valid roll."""
    sus = roll[SUSTAIN] > 0
    if not sus.any():
        return 1.0
    prev = np.zeros_like(sus)
    prev[:, 1:] = (roll[ONSET, :, :-1] > 0) | sus[:, :-1]
    return float((sus & prev).sum() / sus.sum())


def _grid_step(tick: float, ticks_per_step: float) -> tuple[int, bool]:
    q = tick / ticks_per_step
    r = int(round(q))
    return r, abs(q - r) > 1e-6


def _metre(pm: pretty_midi.PrettyMIDI) -> tuple[int, int]:
    ts = [t for t in pm.time_signature_changes if t.time <= 1e-9] or pm.time_signature_changes
    return (ts[0].numerator, ts[0].denominator) if ts else (4, 4)


def midi_to_piece(pm: pretty_midi.PrettyMIDI, steps_per_beat: int = 4, pickup_beats: float = 0.0,
                  n_pitch: int = N_PITCH, pitch_lo: int = 0) -> RollPiece:
    """Quantise every non-drum note to the beat grid (via MIDI ticks, so tempo changes do not move the grid)."""
    tps = pm.resolution / steps_per_beat
    num, den = _metre(pm)
    beats_per_bar = num * 4.0 / den
    spb_bar = int(round(beats_per_bar * steps_per_beat))
    pad = (spb_bar - int(round(pickup_beats * steps_per_beat))) % spb_bar if pickup_beats else 0
    notes, snapped = [], 0
    for inst in pm.instruments:
        if inst.is_drum:
            continue
        for n in inst.notes:
            s, off_s = _grid_step(pm.time_to_tick(n.start), tps)
            e, off_e = _grid_step(pm.time_to_tick(n.end), tps)
            snapped += off_s or off_e or e <= s
            notes.append(Note(n.pitch, s + pad, max(e - s, 1)))
    n_steps = max((n.start + n.length for n in notes), default=0)
    n_steps = int(np.ceil(n_steps / spb_bar) * spb_bar)
    roll, clipped = notes_to_roll(notes, n_steps, n_pitch, pitch_lo)
    qpm = float(pm.get_tempo_changes()[1][0]) if len(pm.get_tempo_changes()[1]) else 120.0
    return RollPiece(roll, steps_per_beat, beats_per_bar, (num, den), qpm, pad, pitch_lo, int(snapped), clipped)


def load_midi(path, steps_per_beat: int = 4, pickup_beats: float = 0.0, n_pitch: int = N_PITCH,
              pitch_lo: int = 0) -> RollPiece:
    """Read a MIDI file into a RollPiece."""
    piece = midi_to_piece(pretty_midi.PrettyMIDI(str(path)), steps_per_beat, pickup_beats, n_pitch, pitch_lo)
    piece.meta["path"] = str(path)
    return piece


def piece_to_midi(piece: RollPiece, program: int = 0, velocity: int = 80) -> pretty_midi.PrettyMIDI:
    """Write a roll back to MIDI at the piece's tempo and metre (pickup padding removed)."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=piece.qpm)
    num, den = piece.time_signature
    pm.time_signature_changes.append(pretty_midi.TimeSignature(int(num), int(den), 0.0))
    inst = pretty_midi.Instrument(program=program)
    sec = 60.0 / piece.qpm / piece.steps_per_beat
    for n in roll_to_notes(piece.roll, piece.pitch_lo):
        s = n.start - piece.pad
        if s < 0:
            continue
        inst.notes.append(pretty_midi.Note(velocity, n.pitch, s * sec, (s + n.length) * sec))
    pm.instruments.append(inst)
    return pm


def segments(roll: np.ndarray, seg_len: int, hop: int) -> list[tuple[int, np.ndarray]]:
    """Windows (start, roll[:, :, start:start+seg_len]) at `hop`; notes crossing the left edge lose their head (no onset)."""
    T = roll.shape[-1]
    out = []
    for s in range(0, max(T - seg_len, 0) + 1, hop):
        w = roll[:, :, s:s + seg_len]
        if w.shape[-1] < seg_len:
            w = np.pad(w, ((0, 0), (0, 0), (0, seg_len - w.shape[-1])))
        out.append((s, w))
    return out


def clean_window(w: np.ndarray) -> np.ndarray:
    """Turn a note cut by a window's left edge into an onset at step 0, so every window is a valid roll."""
    w = w.copy()
    head = w[SUSTAIN, :, 0] > 0
    w[ONSET, head, 0] = 1
    w[SUSTAIN, head, 0] = 0
    return w


def to_model(roll) -> torch.Tensor:
    """(..., 2, P, T) binary -> (..., 2, T, P) in [-1, 1]."""
    r = torch.as_tensor(np.asarray(roll), dtype=torch.float32)
    return (r * 2 - 1).transpose(-1, -2).contiguous()


def from_model(x: torch.Tensor) -> np.ndarray:
    """(..., 2, T, P) model values -> (..., 2, P, T) binary roll, thresholded at 0."""
    return (x.detach().cpu().transpose(-1, -2) > 0).numpy().astype(np.uint8)
