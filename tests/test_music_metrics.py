"""Music metrics on hand-made rolls equal hand-computed values."""
import math

import numpy as np
import pytest

from diffsuite.modalities.music import metrics
from diffsuite.modalities.music.roll import Note, notes_to_roll


@pytest.fixture
def hand_roll():
    # two bars of 4/4 at 4 steps per beat: C+E half bar... see the hand computation in each test
    notes = [Note(60, 0, 4), Note(64, 0, 4), Note(67, 4, 2), Note(60, 8, 1), Note(60, 16, 1)]
    return notes_to_roll(notes, 32)[0]


def test_piece_stats_hand_computed(hand_roll):
    s = metrics.piece_stats(hand_roll, 0, 4, 4)
    assert s["pitch_range"] == 7 and s["n_pitches_used"] == 3 and s["n_pitch_classes_used"] == 3
    h = -(0.6 * math.log2(0.6) + 2 * 0.2 * math.log2(0.2))  # pitch counts 60:3, 64:1, 67:1
    assert s["pitch_entropy"] == pytest.approx(h) and s["pitch_class_entropy"] == pytest.approx(h)
    assert s["scale_consistency"] == 1.0
    assert s["polyphony"] == pytest.approx((4 * 2 + 2 + 1 + 1) / 8)  # 8 sounding steps, 12 pitch-steps
    assert s["polyphony_rate"] == pytest.approx(4 / 32)
    assert s["empty_beat_rate"] == pytest.approx(4 / 8)  # beats 3, 5, 6, 7 are silent
    assert s["groove_consistency"] == pytest.approx(1 - 2 / 16)  # onsets {0,4,8} vs {0}
    assert s["integrity"] == 1.0


def test_scale_consistency_out_of_scale():
    r = notes_to_roll([Note(60 + k, k, 1) for k in range(12)], 16)[0]  # chromatic: best scale holds 7 of 12
    assert metrics.piece_stats(r)["scale_consistency"] == pytest.approx(7 / 12)


def test_yang_lerch_features_hand_computed(hand_roll):
    f = metrics.features(hand_roll)
    assert f["PC"][0] == 3 and f["PR"][0] == 7 and f["NC"][0] == 5
    assert f["PI"][0] == pytest.approx((4 + 3 + 7 + 0) / 4)
    assert f["IOI"][0] == pytest.approx((4 + 4 + 8) / 3)
    assert np.allclose(f["NLH"][:4], [2 / 5, 1 / 5, 0, 2 / 5])
    pctm = f["PCTM"].reshape(12, 12)
    assert pctm[0, 4] == pctm[4, 7] == pctm[7, 0] == pctm[0, 0] == 0.25
    assert np.allclose(f["PCH"][[0, 4, 7]], [0.6, 0.2, 0.2])


def test_overlap_area_and_kl():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 400)
    oa, kl = metrics.overlap_and_kl(a, a)
    assert oa == pytest.approx(1.0, abs=1e-6) and kl == pytest.approx(0.0, abs=1e-6)
    oa, kl = metrics.overlap_and_kl(a, a + 20)
    assert oa < 0.01 and kl > 10
    # two unit Gaussians one sigma apart overlap by 2 * Phi(-1/2) = 0.617
    oa, _ = metrics.overlap_and_kl(rng.normal(0, 1, 4000), rng.normal(1, 1, 4000))
    assert oa == pytest.approx(0.617, abs=0.04)


def test_intra_inter_set_and_memorisation(hand_roll):
    F = np.array([[0.0], [1.0], [3.0]])
    assert sorted(metrics.intra_set(F)) == [1.0, 2.0, 3.0]
    assert sorted(metrics.inter_set(F, np.array([[1.0]]))) == [0.0, 1.0, 2.0]
    other = hand_roll.copy()
    other[0, 60, 8] = 0
    d = metrics.nearest_distance(np.stack([hand_roll, other]), np.stack([hand_roll]))
    assert d[0] == 0 and d[1] == pytest.approx(1 / hand_roll.size)


def test_independent_baseline_keeps_marginals(hand_roll):
    model = metrics.fit_independent([hand_roll] * 3)
    rolls = metrics.sample_independent(model, 5, seed=1)
    assert rolls.shape == (5,) + hand_roll.shape
    pitches = set(np.nonzero(rolls[:, 0].any(axis=(0, 2)))[0])
    assert pitches <= {60, 64, 67}


def test_gaussian_overlap_closed_form():
    assert metrics.gaussian_overlap(0, 1, 0, 1) == pytest.approx(1.0)
    # equal widths: 2 Phi(-|dm| / (2 s)); Phi(-0.5) = (1 + erf(-0.5 / sqrt 2)) / 2
    assert metrics.gaussian_overlap(0, 1, 1, 1) == pytest.approx(1 + math.erf(-0.5 / math.sqrt(2)))
    # equal means, widths 1 and 2: the densities cross at +-x, x^2 = 8 ln 2 / 3; OA = 1 - P1(|z|<x) + P2(|z|<x)
    x = math.sqrt(8 * math.log(2) / 3)
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    expect = 1 - (2 * cdf(x) - 1) + (2 * cdf(x / 2) - 1)
    assert metrics.gaussian_overlap(0, 1, 0, 2) == pytest.approx(expect)
    assert metrics.gaussian_overlap(3, 2, 0, 1) == pytest.approx(metrics.gaussian_overlap(0, 1, 3, 2))


def test_framewise_consistency_variance_hand_computed():
    # frames of 8 steps at a hop of 8: frame 1 pitches 60, 64 (mean 62, sd 2), frame 2 pitches 62, 66 (mean 64, sd 2);
    # every note lasts 2 steps, so the durations' sd is floored at 0.5 with equal means: duration OA = 1
    a = notes_to_roll([Note(60, 0, 2), Note(64, 2, 2), Note(62, 8, 2), Note(66, 10, 2)], 16)[0]
    g = metrics.frame_gaussians(a, 0, frame=8, hop=8)
    assert g[0]["pitch"] == (62, 2) and g[1]["pitch"] == (64, 2) and g[0]["duration"] == (2, 0.5)
    oa_a = 1 + math.erf(-0.5 / math.sqrt(2))  # 2 Phi(-|62 - 64| / (2 * 2))
    ov = metrics.framewise_overlaps([a], 0, 8, 8)
    assert ov["pitch"] == pytest.approx([oa_a]) and ov["duration"] == pytest.approx([1.0])
    # a reference set with identical frames (pitch OA 1): mu_GT = 1, var_GT = 0 over {1, 1}; and a mixed reference
    b = notes_to_roll([Note(60, 0, 2), Note(64, 2, 2), Note(60, 8, 2), Note(64, 10, 2)], 16)[0]
    cv = metrics.consistency_variance([a], [a, b], 0, 8, 8)["pitch"]
    mu_gt, var_gt = (oa_a + 1) / 2, ((1 - oa_a) / 2) ** 2  # the reference overlaps are {oa_a, 1}
    assert cv["consistency"] == pytest.approx(1 - abs(oa_a - mu_gt) / mu_gt)
    assert cv["variance"] == pytest.approx(max(0.0, 1 - abs(0 - var_gt) / var_gt))  # generated variance 0 -> 0
    assert metrics.consistency_variance([a, b], [a, b], 0, 8, 8)["pitch"] == pytest.approx(
        {"consistency": 1.0, "variance": 1.0, "mean_overlap": mu_gt, "var_overlap": var_gt})


def test_note_f1_counts_onsets_and_offsets():
    ref, _ = notes_to_roll([Note(60, 0, 4), Note(64, 0, 2), Note(67, 8, 4)], 16, 128)
    assert metrics.note_f1([ref], [ref]) == 1.0 == metrics.note_f1([ref], [ref], offsets=True)
    # one note missing, one longer: onsets 2 of 3 found (P = 1, R = 2/3), offsets 1 of 2 / 3
    pred, _ = notes_to_roll([Note(60, 0, 6), Note(67, 8, 4)], 16, 128)
    assert metrics.note_f1([pred], [ref]) == 2 * 2 / (2 + 3)
    assert metrics.note_f1([pred], [ref], offsets=True) == 2 * 1 / (2 + 3)
    assert metrics.note_f1([np.zeros_like(ref)], [ref]) == 0.0
