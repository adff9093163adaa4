"""The timbre-transfer measures (modalities.audio.timbre_metrics) and the rendered chorales as a vocoder's data."""
import numpy as np
import pytest
import torch

from diffsuite.modalities.audio import timbre_metrics as M
from diffsuite.modalities.audio.render import NoteEvent, render

torch.set_num_threads(1)


def test_pitch_jaccard_is_musicstars_distance():
    P = [{60, 64}, set(), {67}, {60}]
    Q = [{60}, set(), {67}, {62}]
    # frames where either sounds: 1 - 1/2, 1 - 1, 1 - 0 -> mean 0.5
    assert M.pitch_jaccard(P, Q) == pytest.approx(0.5)
    assert M.pitch_jaccard(P, P) == 0.0 and np.isnan(M.pitch_jaccard([set()], [set()]))
    assert M.to_midi([440.0, 261.63, 0.0, -5.0]) == {69, 60}


def _chord(pitches, seconds=1.5, instrument="strings"):
    return render([(instrument, [NoteEvent(0.0, seconds, p, 90) for p in pitches])], 16000)


@pytest.mark.parametrize("method", ["cqt", "essentia"])
def test_multipitch_hears_a_rendered_chord(method):
    """Both estimators find notes of a rendered C major triad in its sustained frames, and the distance between two
    instruments playing it is far below the distance to another chord."""
    y, z, other = _chord([48, 52, 55, 60]), _chord([48, 52, 55, 60], instrument="clarinet"), _chord([50, 53, 57, 62])
    P, name = M.multipitch(y, method=method)
    mid = P[10:60]
    found = np.mean([len(p & {48, 52, 55, 60}) / max(len(p), 1) for p in mid])
    assert found >= 0.6, (name, mid[:5])
    Q, O = M.multipitch(z, method=method)[0], M.multipitch(other, method=method)[0]
    assert M.pitch_jaccard(P, Q) < M.pitch_jaccard(P, O) - 0.2


def test_logmel_l1_and_patches():
    a, b = torch.zeros(128, 300), torch.ones(128, 310)
    assert M.logmel_l1(a, b) == 1.0
    p = M.patches(torch.zeros(128, 300))
    assert p.shape == (4, 1, 128, 128)  # starts 0, 64, 128 and 172 (the last window)
    assert M.patches(torch.zeros(128, 50)).shape == (1, 1, 128, 128)


def test_noise_patches_are_seeded_and_in_range():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = M.noise_patches(3, (64, 64), g1), M.noise_patches(3, (64, 64), g2)
    assert torch.equal(a, b) and a.shape == (3, 1, 64, 64) and a.abs().max() <= 1


def test_chorales_train_a_vocoder_with_the_timbre_split(tmp_path, monkeypatch):
    """data.source=chorales: the rendered chorales as WAVs, split by chorale as the timbre pairs are, feed a
    DiffWave vocoder in the difftransfer convention."""
    from diffsuite.core.utils import split_of
    from diffsuite.recipes import run
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    over = ["data.corpus_size=10", "train.steps=2", "train.batch_size=2", "model.residual_layers=2",
            "model.residual_channels=4", "model.dilation_cycle=2", "train.progress=false", "train.tensorboard=false",
            "sample.n=1", "sample.steps=2", "data.sample_seconds=0.2"]
    a = run.load(run.train("audio_vocoder_strings", over, out_dir=tmp_path / "voc"))
    files = {s: a.task._files(a.recipe.data, s) for s in ("train", "val", "test")}
    assert sum(map(len, files.values())) == 10 and files["train"]
    assert all(split_of(p.stem) == s for s, fs in files.items() for p in fs)
    item = a.task.build_dataset(a.recipe.data, "train")[0]
    assert item["cond"].shape[0] == 128  # 128 mels, the timbre model's representation
