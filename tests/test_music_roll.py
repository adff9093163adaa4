"""Piano-roll codec and music datasets: round trips, transposition, split by piece, bad files."""
import numpy as np
import pretty_midi
import pytest

from diffsuite.modalities.music import chords, data, roll


def _midi(notes, qpm=120.0, ts=(4, 4), path=None):
    """notes: (pitch, start_beat, end_beat)."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=qpm)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(ts[0], ts[1], 0.0))
    inst = pretty_midi.Instrument(0)
    spb = 60.0 / qpm
    for p, s, e in notes:
        inst.notes.append(pretty_midi.Note(90, p, s * spb, e * spb))
    pm.instruments.append(inst)
    if path:
        pm.write(str(path))
    return pm


def _note_set(pm):
    return sorted((n.pitch, round(n.start, 6), round(n.end, 6)) for i in pm.instruments for n in i.notes)


def _roundtrip(tmp_path, notes, **kw):
    src = tmp_path / "in.mid"
    _midi(notes, path=src, **{k: v for k, v in kw.items() if k in ("qpm", "ts")})
    piece = roll.load_midi(src, pickup_beats=kw.get("pickup", 0.0))
    out = tmp_path / "out.mid"
    roll.piece_to_midi(piece).write(str(out))
    return piece, pretty_midi.PrettyMIDI(str(src)), pretty_midi.PrettyMIDI(str(out))


def test_roundtrip_repeated_notes_exact(tmp_path):
    notes = [(60, 0, 1), (60, 1, 2), (60, 2, 2.25), (64, 0, 4), (67, 0.5, 1.75), (60, 3, 4)]
    piece, a, b = _roundtrip(tmp_path, notes)
    assert piece.n_snapped == 0
    assert _note_set(a) == _note_set(b)
    assert roll.integrity_rate(piece.roll) == 1.0
    assert piece.roll[roll.ONSET, 60].sum() == 4  # repeated notes stay separate


def test_roundtrip_three_four_with_pickup(tmp_path):
    notes = [(67, 0, 1), (72, 1, 3), (71, 3, 4), (72, 4, 7)]  # one-beat pickup in 3/4
    piece, a, b = _roundtrip(tmp_path, notes, qpm=90.0, ts=(3, 4), pickup=1.0)
    assert piece.beats_per_bar == 3.0 and piece.steps_per_bar == 12
    assert piece.pad == 8  # the pickup is padded to a full bar
    assert piece.roll[roll.ONSET, 72 - piece.pitch_lo, 12] == 1  # the first downbeat lands on a bar line
    assert _note_set(a) == _note_set(b)
    assert b.time_signature_changes[0].numerator == 3


def test_off_grid_notes_snapped_and_counted(tmp_path):
    piece, _, b = _roundtrip(tmp_path, [(60, 0.1, 1), (62, 1, 2), (64, 2, 2.9)])
    assert piece.n_snapped == 2
    assert _note_set(b)[0][1] == 0.0


def test_roundtrip_random_quantised(tmp_path):
    rng = np.random.default_rng(0)
    notes = [(int(rng.integers(40, 90)), s / 4, s / 4 + int(rng.integers(1, 8)) / 4)
             for s in rng.integers(0, 64, 60)]
    piece = roll.midi_to_piece(_midi(notes))
    # overlapping notes of one pitch are cut at the next onset; compare against that
    expect = roll.roll_to_notes(roll.notes_to_roll([roll.Note(p, int(s * 4), int((e - s) * 4)) for p, s, e in notes],
                                                   piece.roll.shape[-1])[0])
    rt = roll.midi_to_piece(roll.piece_to_midi(piece))
    assert roll.roll_to_notes(rt.roll) == expect
    assert np.array_equal(rt.roll, piece.roll)


def test_real_chorales_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path))
    pieces = data.corpus_pieces("bach", limit=4)
    assert pieces and all(p.time_signature in ((3, 4), (4, 4)) for p in pieces)
    for p in pieces:
        assert roll.integrity_rate(p.roll) == 1.0
        path = tmp_path / "c.mid"
        roll.piece_to_midi(p).write(str(path))
        pick = (p.steps_per_bar - p.pad) / p.steps_per_beat if p.pad else 0.0
        back = roll.load_midi(path, p.steps_per_beat, pick, p.roll.shape[1], p.pitch_lo)
        assert back.pad == p.pad and back.n_snapped == 0
        assert np.array_equal(back.roll, p.roll)
    manifest = list(tmp_path.rglob("manifest.json"))
    assert manifest and "sha256" in manifest[0].read_text()


def test_transposition_never_wraps():
    r = np.zeros((2, 16, 8), np.uint8)
    r[0, 14, 0] = r[0, 2, 4] = 1
    assert roll_shift_ok(r, 3)
    assert data.allowed_shifts(r, 5) == [-2, -1, 0, 1]
    up = data.transpose(r, 3)
    assert up[0, 15:].sum() == 0 and up[0, 5, 4] == 1 and up[0, :3].sum() == 0  # dropped at the top, nothing wrapped
    for k in data.allowed_shifts(r, 5):
        assert data.transpose(r, k).sum() == r.sum()


def roll_shift_ok(r, k):
    return data.transpose(r, k)[:, :k].sum() == 0


def test_split_by_piece():
    names = [f"piece{i}.mid" for i in range(200)]
    splits = {s: {n for n in names if data.split_of(n) == s} for s in data.SPLITS}
    assert sum(len(v) for v in splits.values()) == 200
    assert all(len(v) > 0 for v in splits.values())
    pieces = [roll.RollPiece(np.zeros((2, 8, 32), np.uint8), meta={"name": n}) for n in names]
    for p in pieces:
        p.roll[0, 1, ::4] = 1
    tr = data.RollWindows(data.split_pieces(pieces, "train"), seg_len=16)
    va = data.RollWindows(data.split_pieces(pieces, "val"), seg_len=16)
    assert not {id(tr.pieces[i]) for i, _ in tr.index} & {id(va.pieces[i]) for i, _ in va.index}
    assert [s for _, s in tr.index[:3]] == [0, 16, 0]  # one-bar hop (16 steps of 4/4)


def test_corrupt_and_empty_midi_skipped_with_warning(tmp_path):
    _midi([(60, 0, 1), (62, 1, 2)], path=tmp_path / "good.mid")
    (tmp_path / "bad.mid").write_bytes(b"MThd\x00\x00garbage")
    _midi([], path=tmp_path / "empty.mid")
    with pytest.warns(UserWarning) as rec:
        pieces = data.load_midi_folder(tmp_path)
    msgs = " ".join(str(w.message) for w in rec)
    assert len(pieces) == 1 and "bad.mid" in msgs and "empty.mid" in msgs and "skipped 2 of 3" in msgs


def test_chords_extract_and_parse():
    r = np.zeros((2, 128, 8), np.uint8)
    for p in (48, 64, 67, 72):  # C major, bass C
        r[0, p, 0] = 1
        r[1, p, 1:4] = 1
    for p in (45, 60, 64, 69):  # A minor
        r[0, p, 4] = 1
    c = chords.extract(r, 0, 4)
    assert c[0, :12].argmax() == 0 and c[1, :12].argmax() == 9 and c[1, 24 + 9] == 1
    target = chords.parse_progression("C Am", 2, 1)
    assert np.array_equal(target, c)
    assert chords.accuracy(r, target, 0, 4) == 1.0
    assert chords.accuracy(r, chords.parse_progression("C G", 2, 1), 0, 4) == 0.5
    root, chroma, bass = chords.parse_symbol("Bbmaj7/D")
    assert root == 10 and bass == 2 and list(np.nonzero(chroma)[0]) == [2, 5, 9, 10]
    with pytest.raises(ValueError, match="Cxyz"):
        chords.parse_symbol("Cxyz")
