"""MusicTask end to end on a small generated MIDI folder: dataset, RollUNet, CFG, samples written to MIDI/PNG/WAV."""
import numpy as np
import pretty_midi
import pytest
import torch

from diffsuite.core.denoiser import Denoiser
from diffsuite.core.guidance import ClassifierFreeGuidance
from diffsuite.core.schedules import make_schedule
from diffsuite.modalities.music.task import NULL_CHORD, MusicDataConfig, MusicModelConfig, MusicTask, resolved


def _folder(tmp_path, n=30):
    rng = np.random.default_rng(0)
    for i in range(n):
        pm = pretty_midi.PrettyMIDI(initial_tempo=120)
        inst = pretty_midi.Instrument(0)
        for b in range(32):  # 8 bars of quarter-note triads
            root = int(rng.integers(48, 60))
            for p in (root, root + 4, root + 7):
                inst.notes.append(pretty_midi.Note(80, p, b * 0.5, b * 0.5 + 0.5))
        pm.instruments.append(inst)
        pm.write(str(tmp_path / f"song{i:02d}.mid"))
    return MusicDataConfig(source=str(tmp_path), seg_len=32, n_pitch=32, pitch_lo=40, transpose_max=2)


def test_dataset_items_and_split(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    data = _folder(tmp_path)
    task = MusicTask()
    tr, va = task.build_dataset(data, "train"), task.build_dataset(data, "val")
    item = tr[0]
    assert item["x0"].shape == task.sample_shape(None, data) == (2, 32, 32)
    assert item["x0"].abs().eq(1).all() and item["cond"].shape == (8, 36)
    names_tr = {tr.pieces[i].meta["name"] for i, _ in tr.index}
    names_va = {va.pieces[i].meta["name"] for i, _ in va.index}
    assert names_tr and names_va and not names_tr & names_va
    assert len(tr) == len(tr.pieces) * 7  # 8 bars, 2-bar windows at a one-bar hop
    assert list((tmp_path / "cache" / "music").glob("midi-*/manifest.json"))  # parsed once into the cache


def test_polyffusion_preset_parameter_count():
    # Polyffusion (Min et al. 2023, params/sdf_chd8bar.yaml): 64 channels, mults (1,2,4,4), 2 res blocks, attention
    # (self, cross, GEGLU feed-forward) at the two coarsest levels: about 40M parameters; we accept 40M +- 5%
    n = sum(p.numel() for p in MusicTask().build_net(MusicModelConfig(preset="polyffusion")).parameters())
    assert abs(n - 40e6) <= 0.05 * 40e6, n


def test_chord_planes_align_with_pitch_axis():
    from diffsuite.modalities.music import chords
    task = MusicTask()
    with pytest.raises(ValueError, match="pitch_lo"):
        task.build_net(MusicModelConfig(preset="small"))
    net = task.build_net(MusicModelConfig(preset="small", pitch_lo=40))
    cond = torch.from_numpy(chords.parse_progression("C G/B", 2))[None]  # 2 beats
    planes = net.chord_planes(cond, 8, 32)  # 4 steps per beat, pitches 40..71
    assert planes.shape == (1, 3, 8, 32)
    pcs = lambda row: {(40 + p) % 12 for p in torch.nonzero(row).flatten().tolist()}  # noqa: E731
    assert pcs(planes[0, 0, 0]) == {0, 4, 7} and pcs(planes[0, 0, 7]) == {7, 11, 2}  # chroma per beat
    assert pcs(planes[0, 1, 3]) == {0} and pcs(planes[0, 2, 4]) == {11}  # root of beat 1, bass of beat 2
    assert torch.equal(net.chord_planes(torch.full_like(cond, NULL_CHORD), 8, 32), -torch.ones(1, 3, 8, 32))
    with pytest.raises(ValueError, match="data.pitch_lo"):
        task.sample_shape(MusicModelConfig(preset="small", pitch_lo=40), MusicDataConfig(pitch_lo=32))


def test_folded_chord_planes_are_the_rolls_planes_in_channels():
    """A latent model (chord_fold = f) reads the planes of the f-times larger roll, folded cell by cell into channels:
    channel c * f^2 + i * f + j at latent cell (t, p) is plane c at roll cell (f t + i, f p + j)."""
    from diffsuite.modalities.music import chords
    f = 4
    net = MusicTask().build_net(MusicModelConfig(preset="small", pitch_lo=40, patch=1, in_channels=3, chord_fold=f))
    assert net.inp.in_channels == 3 + 3 * f * f
    cond = torch.from_numpy(chords.parse_progression("C G/B", 2))[None]
    seen = {}
    net.inp.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    net(torch.zeros(1, 3, 4, 8), torch.tensor([10]), cond)  # latent of an (8 steps x 32 pitches) roll
    full = net.chord_planes(cond, 8, 32)
    folded = seen["x"][0, 3:]
    for c, i, j, t, p in [(0, 0, 0, 0, 0), (0, 3, 1, 1, 5), (1, 2, 3, 0, 7), (2, 1, 2, 1, 2)]:
        assert folded[c * f * f + i * f + j, t, p] == full[0, c, f * t + i, f * p + j]


def test_presets_and_cfg_zero_equals_conditional():
    task = MusicTask()
    assert resolved(MusicModelConfig(preset="small", channels=8))["channels"] == 8
    torch.manual_seed(0)
    net = task.build_net(MusicModelConfig(preset="small", pitch_lo=40))
    for p in net.parameters():  # leave the zero-initialised output layers' identity behaviour
        torch.nn.init.normal_(p, 0, 0.05)
    den = Denoiser(net, make_schedule("cosine", 100)).eval()
    x, t = torch.randn(2, 2, 32, 32), torch.tensor([5.0, 60.0])
    c = torch.rand(2, 8, 36)
    with torch.no_grad():
        e_c = den(x, t, c).eps
        assert e_c.shape == x.shape
        e_u = den(x, t, torch.full_like(c, NULL_CHORD)).eps
        assert not torch.allclose(e_c, e_u)  # the chords reach the output
        assert torch.equal(ClassifierFreeGuidance(den, 0.0, NULL_CHORD)(x, t, c).eps, e_c)
    with pytest.raises(ValueError, match="beats"):
        net(x, t, torch.rand(2, 36))


def test_save_samples_writes_midi_png_wav(tmp_path):
    from types import SimpleNamespace
    data = MusicDataConfig(seg_len=32, n_pitch=32, pitch_lo=40)
    x = -torch.ones(2, 2, 32, 32)
    x[:, 0, ::4, 10] = 1
    x[:, 1, 1::4, 10] = 1
    files = MusicTask().save_samples(x, None, tmp_path, SimpleNamespace(data=data))
    pm = pretty_midi.PrettyMIDI(files["midi_0"])
    assert [n.pitch for n in pm.instruments[0].notes] == [50] * 8
    assert all(abs((n.end - n.start) - 2 * 60 / 100 / 4) < 1e-6 for n in pm.instruments[0].notes)
    assert (tmp_path / "pianoroll.png").stat().st_size > 0 and (tmp_path / "piece_00.wav").stat().st_size > 0
