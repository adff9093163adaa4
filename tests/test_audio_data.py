"""Audio datasets: WAV round trip, layouts, crops, corrupt files, short clips, mel cache; the built-in corpus."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from diffsuite.modalities.audio.data import AudioClips, list_files, mel_cache_path
from diffsuite.modalities.audio.mel import convention, mel_spectrogram

SR = 22050


def _tone(n, f=330.0, sr=SR):
    return (0.5 * np.sin(2 * np.pi * f * np.arange(n) / sr)).astype(np.float32)


def test_wav_round_trip_through_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    y = (np.random.default_rng(1).uniform(-0.5, 0.5, SR) * 32767).astype(np.int16) / np.float32(32768)
    sf.write(tmp_path / "a.wav", y, SR, subtype="PCM_16")
    c = convention("hifigan")
    ds = AudioClips([tmp_path / "a.wav"], c, crop_samples=84 * 256, progress=False)
    item = ds[0]
    assert item["x0"].shape == (1, 84 * 256) and item["cond"].shape == (80, 84)
    f0 = int(np.flatnonzero(y == item["x0"][0, 0].item())[0])
    np.testing.assert_array_equal(item["x0"][0].numpy(), y[f0: f0 + 84 * 256])  # PCM_16 round trip is exact
    assert f0 % 256 == 0
    full = mel_spectrogram(torch.from_numpy(y), c)
    np.testing.assert_allclose(item["cond"].numpy(), full[:, f0 // 256: f0 // 256 + 84].numpy(), atol=1e-5)
    assert mel_cache_path(tmp_path / "a.wav", c).is_file() and ".v1.mel.npy" in mel_cache_path(tmp_path / "a.wav", c).name


def test_aligned_crops_reproducible_with_global_seed(tmp_path):
    y = np.random.default_rng(0).uniform(-0.5, 0.5, 3 * SR).astype(np.float32)
    sf.write(tmp_path / "n.wav", y, SR, subtype="FLOAT")
    ds = AudioClips([tmp_path / "n.wav"], convention("hifigan"), crop_samples=2048, progress=False)
    torch.manual_seed(5)
    a = ds[0]
    torch.manual_seed(5)
    b = ds[0]
    assert torch.equal(a["x0"], b["x0"]) and torch.equal(a["cond"], b["cond"])
    start = int(np.flatnonzero(y == a["x0"][0, 0].item())[0])
    assert start % 256 == 0
    mel = mel_spectrogram(torch.from_numpy(y), convention("hifigan"))
    np.testing.assert_allclose(a["cond"].numpy(), mel[:, start // 256: start // 256 + 8].numpy(), atol=1e-5)


def test_stereo_mixdown_and_resampling(tmp_path):
    st = np.stack([_tone(16000, 200, 16000), np.zeros(16000, np.float32)], axis=1)
    sf.write(tmp_path / "s.flac", st, 16000)
    ds = AudioClips(list_files("folder", tmp_path, None), convention("hifigan"), crop_samples=1024, progress=False)
    assert ds.clips[0].n_samples == SR  # 1 s at 16 kHz -> 22050 samples
    assert abs(float(ds[0]["x0"].abs().max()) - 0.25) < 0.02  # the mean of a 0.5 tone and silence


def test_corrupt_file_skipped_with_warning(tmp_path):
    sf.write(tmp_path / "good.wav", _tone(4096), SR)
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.warns(UserWarning) as rec:
        ds = AudioClips(list_files("folder", tmp_path, None), convention("hifigan"), 2048, progress=False)
    msgs = [str(w.message) for w in rec]
    assert any("bad.wav" in m for m in msgs) and any("skipped 1 unreadable" in m for m in msgs)
    assert len(ds) == 1 and ds.skipped[0].name == "bad.wav"


def test_short_clips_pad_or_skip(tmp_path):
    sf.write(tmp_path / "short.wav", _tone(1000), SR)
    sf.write(tmp_path / "long.wav", _tone(5000), SR)
    files = list_files("folder", tmp_path, None)
    padded = AudioClips(files, convention("hifigan"), 2048, short="pad", progress=False)
    assert len(padded) == 2 and padded[1]["x0"].shape == (1, 2048)  # sorted: long, short
    assert torch.all(padded[1]["x0"][0, 1000:] == 0)
    with pytest.warns(UserWarning, match="shorter than 2048"):
        skipped = AudioClips(files, convention("hifigan"), 2048, short="skip", progress=False)
    assert len(skipped) == 1
    with pytest.raises(ValueError, match="multiple of the hop"):
        AudioClips(files, convention("hifigan"), 2000, progress=False)


def test_ljspeech_and_filelist_layouts(tmp_path):
    (tmp_path / "wavs").mkdir()
    for i in ("LJ001-0001", "LJ002-0001", "LJ003-0001", "LJ003-0002"):
        sf.write(tmp_path / "wavs" / f"{i}.wav", _tone(3000), SR)
    (tmp_path / "metadata.csv").write_text("LJ001-0001|Hi.|Hi.\nLJ002-0001|A.|A.\nLJ003-0001|B|B\nLJ003-0002|C|C\n")
    assert [p.stem for p in list_files("ljspeech", tmp_path, "train")] == ["LJ003-0001", "LJ003-0002"]
    assert [p.stem for p in list_files("ljspeech", tmp_path, "test")] == ["LJ001-0001"]
    (tmp_path / "list.txt").write_text("wavs/LJ003-0001.wav|some text\nwavs/LJ001-0001.wav|more\n")
    assert [p.stem for p in list_files("filelist", tmp_path / "list.txt", None)] == ["LJ003-0001", "LJ001-0001"]
    with pytest.raises(FileNotFoundError, match="metadata.csv"):
        list_files("ljspeech", tmp_path / "wavs", "train")


def test_unconditional_items_are_waveforms(tmp_path):
    sf.write(tmp_path / "u.wav", _tone(16000, sr=16000), 16000)
    ds = AudioClips([tmp_path / "u.wav"], convention("hifigan", sample_rate=16000), 16000, conditional=False,
                    progress=False)
    assert ds[0].shape == (1, 16000)


def test_builtin_corpus_bit_identical_twice(tmp_path, monkeypatch):
    pytest.importorskip("espeakng_loader")
    from diffsuite.modalities.audio.corpus import build_corpus
    m1 = build_corpus(tmp_path / "a", n=4, shard_size=2, progress=False)
    m2 = build_corpus(tmp_path / "b", n=4, shard_size=2, progress=False)
    assert m1 == m2 and len([f for f in m1["files"] if f.endswith(".wav")]) == 4
    for f in m1["files"]:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    info = sf.info(str(tmp_path / "a" / "wavs" / "ES000-0000.wav"))
    assert info.samplerate == 22050 and info.frames > 0.5 * 22050
    splits = {s: (tmp_path / "a" / "splits" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert sorted(sum(splits.values(), [])) == sorted(json.loads((tmp_path / "a" / "manifest.json").read_text())
                                                      ["files"] and [f"ES000-000{i}" for i in range(4)])
    assert [p.stem for p in list_files("ljspeech", tmp_path / "a", "test")] == splits["test"]
