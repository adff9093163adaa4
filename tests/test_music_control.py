"""Music control: infilling keeps the given bars exactly, melody masks, continuation, CFG with scale 0."""
import numpy as np
import pytest
import torch
from torch import nn

from diffsuite.core.denoiser import Denoiser
from diffsuite.core.guidance import ClassifierFreeGuidance
from diffsuite.core.schedules import make_schedule
from diffsuite.modalities.music import control
from diffsuite.modalities.music.cli import parse_bars
from diffsuite.modalities.music.roll import Note, notes_to_roll
from diffsuite.modalities.music.task import NULL_CHORD

P, T = 16, 32


class TinyNet(nn.Module):
    """A small conv net whose output depends on the chord condition (stand-in for RollUNet)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.c = nn.Linear(36, 2)

    def forward(self, x, t, cond=None):
        h = self.conv(x) + (t / 1000).view(-1, 1, 1, 1)
        if cond is not None:
            h = h + self.c(cond.mean(1))[:, :, None, None]
        return h


@pytest.fixture
def den():
    return Denoiser(TinyNet(), make_schedule("linear", 100)).eval()


def _roll():
    notes = [Note(3 + (i % 5), 2 * i, 2) for i in range(16)] + [Note(12, 0, 8), Note(12, 8, 8), Note(1, 16, 16)]
    return notes_to_roll(notes, T, P, 0)[0]


@pytest.mark.parametrize("resample", [False, True])
def test_infill_keeps_given_bars_exactly(den, resample):
    r = _roll()
    mask = control.bar_mask(r.shape, parse_bars("2"), 16)
    assert mask[:, :, 16:].sum() == 0 and mask[:, :, :16].all()
    g = torch.Generator().manual_seed(0)
    out = control.run_inpaint(den, np.repeat(r[None], 3, 0), np.repeat(mask[None], 3, 0), steps=10, generator=g,
                              resample=resample, **({"jump_length": 2, "jump_n_sample": 2} if resample else {}))
    assert np.array_equal(out[:, :, :, :16], np.repeat(r[None, :, :, :16], 3, 0))
    assert not np.array_equal(out[:, :, :, 16:], np.repeat(r[None, :, :, 16:], 3, 0))  # the gap was regenerated


def test_melody_and_accompaniment_masks():
    r = _roll()
    m, known = control.melody_mask(r)
    top = control.skyline(r)
    assert top[0] == 12 and top[16] == 6
    assert known[0, 12, 0] == 1 and known[:, :12, :16].sum() == 0 and known[0, 6, 16] == 1  # only the highest voice is given
    assert m[:, 12:, 0].all() and not m[:, :12, 0].any()
    m2, known2 = control.accompaniment_mask(r)
    assert np.array_equal(m + m2, np.ones_like(m))
    assert known2[0, 1, 16] == 1 and known2[:, 12].sum() == 0


def test_continuation_keeps_prefix(den):
    r = _roll()
    out = control.continue_piece(den, r, 40, seg_len=32, steps_per_bar=16, steps=5,
                                 generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, P, T + 40)
    assert np.array_equal(out[:, :, :T], r)


def test_guidance_scale_zero_equals_conditional(den):
    x = torch.randn(2, 2, T, P)
    t = torch.tensor([10.0, 50.0])
    cond = torch.rand(2, 8, 36)
    cfg0 = ClassifierFreeGuidance(den, 0.0, NULL_CHORD)(x, t, cond)
    assert torch.equal(cfg0.eps, den(x, t, cond).eps)
    cfg3 = ClassifierFreeGuidance(den, 3.0, NULL_CHORD)(x, t, cond)
    e_c, e_u = den(x, t, cond).eps, den(x, t, torch.full_like(cond, NULL_CHORD)).eps
    assert torch.allclose(cfg3.eps, 4 * e_c - 3 * e_u, atol=1e-5)


def test_parse_bars_errors():
    assert parse_bars("3-4") == range(2, 4)
    with pytest.raises(ValueError, match="--bars"):
        parse_bars("x")


def test_compose_cli_writes_files(den, tmp_path):
    """`diffsuite compose` with a stand-in checkpoint loader: free, chords, infill, continue, melody."""
    import argparse
    from types import SimpleNamespace

    import pretty_midi

    from diffsuite.core.config import SampleConfig
    from diffsuite.modalities.music import cli
    from diffsuite.modalities.music.roll import RollPiece, piece_to_midi
    from diffsuite.modalities.music.task import MusicDataConfig, MusicModelConfig, MusicTask

    data = MusicDataConfig(seg_len=32, n_pitch=16, pitch_lo=0)
    recipe = SimpleNamespace(model=MusicModelConfig(chord_cond=True), data=data,
                             sample=SampleConfig(guidance=1.5, sampler="ddim", steps=4, eta=1.0))
    task = MusicTask()
    task.sample_cond = lambda n, cfg, g: torch.rand(n, 8, 36, generator=g)
    loaded = SimpleNamespace(task=task, recipe=recipe, denoiser=den, checkpoint="fake")
    src = tmp_path / "in.mid"
    piece_to_midi(RollPiece(_roll(), qpm=120.0)).write(str(src))
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    for extra in [[], ["--chords", "C G"], ["--infill", str(src), "--bars", "2"], ["--continue", str(src), "--bars", "2"],
                  ["--melody", str(src)]]:
        out = tmp_path / ("o" + str(len(extra)) + (extra[0] if extra else ""))
        args = parser.parse_args(["compose", "ckpt", "--n", "2", "--out", str(out), *extra])
        args.load = lambda path, **kw: loaded
        assert args.func(args) == 0
        mids = sorted(out.glob("piece_*.mid"))
        assert len(mids) == 2 and (out / "pianoroll.png").exists() and (out / "compose.json").exists()
        if extra and extra[0] == "--continue":
            assert pretty_midi.PrettyMIDI(str(mids[0])).get_end_time() > 0
    # the recipe's eta (1.0) reaches the sampler; --eta overrides it
    midis = {}
    for tag, extra in [("recipe", []), ("eta1", ["--eta", "1"]), ("eta0", ["--eta", "0"])]:
        args = parser.parse_args(["compose", "ckpt", "--n", "2", "--seed", "3", "--out", str(tmp_path / tag), *extra])
        args.load = lambda path, **kw: loaded
        assert args.func(args) == 0
        midis[tag] = [p.read_bytes() for p in sorted((tmp_path / tag).glob("piece_*.mid"))]
    assert midis["recipe"] == midis["eta1"] and midis["eta0"] != midis["eta1"]
    with pytest.raises(ValueError, match="--bars"):
        args = parser.parse_args(["compose", "ckpt", "--out", str(tmp_path), "--infill", str(src), "--bars", "0-1"])
        args.load = lambda path, **kw: loaded
        args.func(args)


def test_triad_classes_and_the_note_reading_rule():
    import numpy as np
    from diffsuite.modalities.music import chords
    rows, class_of, names = chords.triad_conditions()
    assert rows.shape == (108, 36) and len(names) == 108 and np.bincount(class_of).tolist() == [3] * 36
    assert chords.triad_names()[:3] == ["C", "Cm", "Cdim"] and names[:3] == ["C", "C/E", "C/G"]
    c_e = rows[1]  # C major over E: root C, chroma C E G, bass E
    assert c_e[0] == 1 and set(np.nonzero(c_e[12:24])[0]) == {0, 4, 7} and c_e[24 + 4] == 1
    chroma = lambda *pcs: np.isin(np.arange(12), pcs).astype(float)  # noqa: E731
    assert chords.triad_class(chroma(0, 4, 7), 4) == 0  # C/E is C major
    assert chords.triad_class(chroma(9, 0, 4), 9) == 3 * 9 + 1  # A minor
    assert chords.triad_class(chroma(7, 11, 2, 5), 7) == 3 * 7  # G7 counts as G major
    assert chords.triad_class(chroma(11, 2, 5), 11) == 3 * 11 + 2  # B diminished
    assert chords.triad_class(chroma(), -1) == -1
    assert chords.bass_rule_class(chroma(0, 4, 7), 0) == 0
    assert chords.bass_rule_class(chroma(0, 4, 7), 4) != 0  # the rule misreads an inversion


def test_chord_classification_inputs_of_a_split():
    import numpy as np
    import torch
    from diffsuite.modalities.music import chords
    from diffsuite.modalities.music.roll import from_model
    from diffsuite.recipes.run import load_recipe
    from diffsuite.recipes.registry import get_task
    r = load_recipe("music_bach_quick")
    task = get_task("music")
    c = task.classification_inputs(r, "val").first(4)
    assert c.per_input and c.conditions.shape[:2] == (4, 108) and len(c.names) == 36
    for x, cond, label, b in zip(c.x, c.conditions, c.labels, c.where):
        own = chords.extract(from_model(x[None])[0], r.data.pitch_lo, r.data.steps_per_beat)
        others = [i for i in range(len(own)) if i != b]
        assert np.allclose(cond[:, others].numpy(), own[None, others])  # the rest of the progression is the window's
        chroma, bass = chords.chroma_bass(from_model(x[None])[0], r.data.pitch_lo, r.data.steps_per_beat)
        assert int(label) == chords.triad_class(chroma[b], int(bass[b])) >= 0
        assert torch.equal(torch.unique(c.class_of), torch.arange(36))
    from diffsuite.core.config import ConfigError
    with pytest.raises(ConfigError, match="train, val or test"):
        task.classification_inputs(r, "song.mid")
