"""Intelligibility tools of benchmarks/audio.py: the word scorer, the trigram language model, the machine listener
(pocketsphinx) and the blinded listening pack with its scorer, on real espeak-ng sentences."""
import importlib.util
import json
import math

import numpy as np
import pytest
import soundfile as sf

from tiny import benchmark_script

A = benchmark_script("audio.py", "bench_audio")


def test_words_correct_counts_reference_words_heard_in_order():
    assert A.words("Who saw my brother, yesterday?") == ["who", "saw", "my", "brother", "yesterday"]
    assert A.words_correct("The old man found a red box.", "the old man found red box") == 6
    assert A.words_correct("a b c", "c b a") == 1  # order matters
    assert A.words_correct("a b c", "a x b y c z") == 3  # insertions cost nothing here
    assert A.words_correct("a b", "") == 0


def _read_arpa(text):
    """{ngram tuple: (log10 p, log10 backoff)} from ARPA text."""
    table, order = {}, 0
    for line in text.splitlines():
        if line.startswith("\\") and line.endswith("-grams:"):
            order = int(line[1])
        elif order and line.strip() and not line.startswith("\\"):
            f = line.split()
            table[tuple(f[1:1 + order])] = (float(f[0]), float(f[1 + order]) if len(f) > 1 + order else 0.0)
    return table


def _p(table, k):
    if k in table:
        return 10 ** table[k][0]
    return 10 ** table.get(k[:-1], (0.0, 0.0))[1] * _p(table, k[1:])


def test_arpa_trigram_is_a_normalised_backoff_model():
    sentences = ["the old man found a red box", "the old man lost the map", "a young girl found the map",
                 "who saw the old man yesterday"]
    table = _read_arpa(A.arpa_trigram(sentences, discount=0.5))
    vocab = sorted({w for s in sentences for w in s.split()}) + ["</s>"]
    # a seen trigram keeps (count - D) / count(history): "old man" is followed by found, lost and yesterday
    assert math.isclose(_p(table, ("old", "man", "found")), (1 - 0.5) / 3, rel_tol=1e-5)
    for h in [("<s>", "the"), ("old", "man"), ("the", "map"), ("red", "girl"), ("found",), ("yesterday",)]:
        total = sum(_p(table, (*h, w)) for w in vocab)
        assert math.isclose(total, 1.0, rel_tol=1e-4), (h, total)  # seen, unseen and mixed histories


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Eight real espeak-ng sentences in LJSpeech layout; clips 4-7 held out as the test split."""
    from diffsuite.modalities.audio.corpus import build_corpus
    root = tmp_path_factory.mktemp("corpus")
    build_corpus(root, n=8, shard_size=8, progress=False)
    ids = [line.split("|")[0] for line in (root / "metadata.csv").read_text().splitlines()]
    (root / "splits" / "train.txt").write_text("\n".join(ids[:4]) + "\n")
    (root / "splits" / "test.txt").write_text("\n".join(ids[4:]) + "\n")
    return root


def test_machine_listener_hears_the_words_of_real_speech(corpus):
    pytest.importorskip("pocketsphinx")
    files = sorted((corpus / "wavs").glob("*.wav"))
    text = A.transcripts(files)
    listener = A.MachineListener(list(text.values()))
    heard = right = wrong = total = 0
    for i, f in enumerate(files[:4]):
        y, sr = sf.read(f)
        h = listener(A.noise_vocoder(y, sr, 16, seed=0), sr)  # 16-band noise vocoding: what it hears best
        right += A.words_correct(text[f], h)
        wrong += A.words_correct(text[files[(i + 1) % 4]], h)
        total += len(A.words(text[f]))
        heard += len(A.words(h))
    assert heard > 0 and right / total >= 0.6, (right, total)
    assert wrong < right  # it scores the sentence spoken, not the words common to all sentences


@pytest.fixture(scope="module")
def run(corpus):
    from diffsuite.recipes.run import train
    overrides = ["data.source=ljspeech", f"data.path={corpus}", "data.crop_samples=1024", "model.residual_layers=2",
                 "model.residual_channels=4", "model.dilation_cycle=2", "train.steps=2", "train.batch_size=2",
                 "train.progress=false", "train.tensorboard=false", "train.log_every=1"]
    return train("audio_vocoder_quick", overrides, out_dir=corpus.parent / "run")


def test_listening_pack_is_blinded_and_scored_per_condition(corpus, run, tmp_path):
    pack = tmp_path / "pack"
    assert A.main(["listen", str(run), str(pack), "--splits", "test", "--conditions", "reference", "ddim:2"]) == 0
    key = json.loads((pack / "key.json").read_text())["clips"]
    clips = sorted(p.name for p in (pack / "clips").iterdir())
    assert clips == ["01.flac", "02.flac", "03.flac", "04.flac"]  # numbered, no condition in the name
    assert sorted(c["condition"] for c in key) == ["ddim:2", "ddim:2", "reference", "reference"]
    assert len({c["id"] for c in key}) == 4  # each sentence heard once
    rms = [np.sqrt(np.mean(sf.read(pack / "clips" / c)[0] ** 2)) for c in clips]
    assert np.allclose(rms, 0.05, rtol=0.05)  # one level: loudness gives nothing away
    assert (pack / "answers.txt").read_text() == "01: \n02: \n03: \n04: \n"
    vocabulary = sorted({w for t in A.transcripts(sorted((corpus / "wavs").glob("*.wav"))).values() for w in A.words(t)})
    assert (pack / "INSTRUCTIONS.txt").read_text().splitlines()[-1] == " ".join(vocabulary)  # the closed set
    # the listener got every reference sentence and the first word of each ddim:2 sentence
    answers = [f"{c['clip']}: {c['sentence'] if c['condition'] == 'reference' else c['sentence'].split()[0]}"
               for c in key]
    (pack / "answers.txt").write_text("\n".join(answers) + "\n")
    assert A.main(["listen-score", str(pack)]) == 0
    rows = {r["condition"]: r for r in json.loads((pack / "score.json").read_text())["rows"]}
    assert rows["reference"]["percent_correct"] == 100.0
    ddim = [c for c in key if c["condition"] == "ddim:2"]
    assert rows["ddim:2"]["correct"] == 2 and rows["ddim:2"]["words"] == sum(len(A.words(c["sentence"])) for c in ddim)
    if importlib.util.find_spec("pocketsphinx"):  # the machine listener fills its own answers file
        assert A.main(["listen-score", str(pack), "--machine", str(run)]) == 0
        assert [line[:4] for line in (pack / "answers_machine.txt").read_text().splitlines()] == \
            ["01: ", "02: ", "03: ", "04: "]
        machine = json.loads((pack / "score_machine.json").read_text())
        assert machine["answers"] == "answers_machine.txt" and len(machine["rows"]) == 2


def test_listening_score_names_a_bad_line(corpus, run, tmp_path):
    pack = tmp_path / "pack"
    A.main(["listen", str(run), str(pack), "--splits", "test", "--conditions", "reference"])
    with pytest.raises(FileExistsError, match="already holds one"):  # a second pack would mix with the first
        A.main(["listen", str(run), str(pack), "--splits", "test"])
    (pack / "answers.txt").write_text("01: the old man\n2 the map\n")
    with pytest.raises(ValueError, match="line 2: expected 'NN: words heard'"):
        A.main(["listen-score", str(pack)])
    (pack / "answers.txt").write_text("01: the old man\n")
    with pytest.raises(ValueError, match=r"no line for clip\(s\) 02, 03, 04"):
        A.main(["listen-score", str(pack)])


def test_quality_listener_scores_whole_sentences(run, tmp_path):
    with pytest.raises(ValueError, match="pass --max-seconds 0"):
        A.main(["quality", str(run), "--listener", "--samplers", "reference", "--out", str(tmp_path / "q.json")])
    pytest.importorskip("pocketsphinx")
    assert A.main(["quality", str(run), "--split", "test", "--clips", "4", "--max-seconds", "0", "--listener",
                   "--samplers", "noisevoc:16", "--out", str(tmp_path / "q.json")]) == 0
    row = json.loads((tmp_path / "q.json").read_text())["rows"][0]
    assert row["clips"] == 4 and row["words_correct"] > row["words_chance"]


def test_step_embedding_diagnostic_reports_both_embeddings(run, tmp_path):
    assert A.main(["embedding", str(run), "--split", "test", "--clips", "1", "--out", str(tmp_path / "e.json")]) == 0
    d = json.loads((tmp_path / "e.json").read_text())
    assert [r["sampler"] for r in d["rows"]] == ["fast (lerp)", "fast (sinusoid)", "fast (rounded)"]
    lerp, direct = d["eps_mse"]["lerp"], d["eps_mse"]["sinusoid"]
    integer = [k for k in lerp if float(k).is_integer()]
    assert integer and all(lerp[k] == direct[k] for k in integer)  # the embeddings agree at integer steps
    assert any(lerp[k] != direct[k] for k in lerp if k not in integer)
