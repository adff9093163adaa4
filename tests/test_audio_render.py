"""Offline General MIDI rendering for timbre transfer (modalities.audio.render): deterministic, sample-aligned across
instruments, and the paired chorale corpus built from music21's Bach chorales."""
import json

import numpy as np
import pytest

from diffsuite.modalities.audio.render import NoteEvent, render, render_corpus, score_voices

NOTES = [NoteEvent(0.1, 0.6, 60, 90), NoteEvent(0.5, 1.0, 64, 80)]


def test_rendering_is_deterministic_and_sample_aligned():
    a, b = render([("clarinet", NOTES)]), render([("clarinet", NOTES)])
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert len(a) == round((1.0 + 0.5) * 16000)  # the last note-off, then half a second
    for inst in ("clarinet", "vibraphone", "piano"):
        x = render([(inst, NOTES)])
        assert len(x) == len(a) and not np.any(np.abs(x[:1600]) > 0)  # silent before the first note-on
        assert abs(int(np.argmax(np.abs(x) > 1e-4)) - 1600) <= 3, inst  # and sounding from its sample on
    two = render([("clarinet", NOTES[:1]), ("piano", NOTES[1:])])
    assert len(two) == len(a) and np.abs(two).max() > 0
    with pytest.raises(ValueError, match="unknown instrument 'kazoo'"):
        render([("kazoo", NOTES)])


def test_score_voices_follow_the_score():
    from music21 import meter, note, stream
    s = stream.Score()
    for pitches in (["C5", "D5"], ["E4", "F4"]):
        p = stream.Part()
        p.append(meter.TimeSignature("4/4"))
        for q in pitches:
            p.append(note.Note(q, quarterLength=2))
        s.insert(0, p)
    v = score_voices(s, qpm=120, velocity=77)
    assert [[(n.start, n.end, n.pitch) for n in part] for part in v] == [
        [(0.0, 1.0, 72), (1.0, 2.0, 74)], [(0.0, 1.0, 64), (1.0, 2.0, 65)]]
    assert v[0][0].velocity == 77


def test_the_paired_chorale_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path))
    a = render_corpus(("clarinet",), limit=2)
    b = render_corpus(("clarinet", "clarinet", "vibraphone", "vibraphone"), limit=2)
    assert list(a) == list(b) and len(a) == 2
    assert all(len(a[k]) == len(b[k]) and a[k].dtype == np.int16 for k in a)  # pairs, sample for sample
    assert not all(np.array_equal(a[k], b[k]) for k in a)
    (folder,) = [p for p in (tmp_path / "timbre").iterdir() if p.name.startswith("clarinet-clarinet-clarinet")]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["clips"] == 2 and set(manifest["splits"]) == set(a)
    mtime = (folder / "audio.npz").stat().st_mtime
    again = render_corpus(("clarinet",), limit=2)  # read from the cache, not rendered again
    assert (folder / "audio.npz").stat().st_mtime == mtime and all(np.array_equal(a[k], again[k]) for k in a)
