"""The built-in speech corpus: sentences synthesised with the espeak-ng library shipped by `espeakng-loader`.

Sentences come from a deterministic generator over small word lists; each is spoken by one of several
voices at a pitch and rate drawn from a seeded RNG, resampled to 22050 Hz and written in LJSpeech layout
(metadata.csv, wavs/, splits/{train,val,test}.txt). espeak-ng keeps global state inside a process, so
every shard is synthesised in a fresh subprocess, in a fixed order. A manifest records the settings and
the content hash of every file; the corpus is cached under the diffsuite cache folder.
"""
from __future__ import annotations

import ctypes
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from diffsuite.core.utils import atomic_write_bytes, atomic_write_json, cache_dir, sha256_file

CORPUS_VERSION = 2
SAMPLE_RATE = 22050
VOICES = ("en-us", "en-us+f3", "en", "en-us+m3", "en+f2", "en-us+m7")
SPLIT_FRACTIONS = {"val": 0.05, "test": 0.05}

SUBJECTS = ["the old man", "a young girl", "my brother", "the teacher", "our neighbour", "the small dog",
            "a tired farmer", "the captain", "her mother", "the baker", "a quiet student", "the doctor"]
VERBS = ["found", "painted", "carried", "opened", "cleaned", "watched", "bought", "fixed", "sold", "lost",
         "noticed", "followed"]
OBJECTS = ["a red box", "the heavy door", "seven apples", "the broken clock", "a blue bicycle", "the letter",
           "an empty bottle", "the garden gate", "a warm coat", "the silver key", "two paper boats", "the map"]
PLACES = ["near the river", "in the kitchen", "before sunrise", "after the storm", "on the hill",
          "at the market", "under the bridge", "during the winter", "behind the school", "by the station"]
QUESTIONS = ["Where did {s} go", "Why was {s} so happy", "When will {s} come back", "Who saw {s} yesterday"]


def sentence(rng: random.Random) -> str:
    """One sentence from the word lists: a statement or a question."""
    s = rng.choice(SUBJECTS)
    if rng.random() < 0.2:
        return rng.choice(QUESTIONS).format(s=s) + "?"
    text = f"{s} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}"
    return text[0].upper() + text[1:] + "."


def utterances(n: int, seed: int = 0) -> list[dict]:
    """n utterance specs (id, text, voice, pitch, rate), fully determined by (n, seed)."""
    rng = random.Random(seed)
    return [{"id": f"ES{i // 100:03d}-{i % 100:04d}", "text": sentence(rng), "voice": VOICES[i % len(VOICES)],
             "pitch": rng.randint(35, 65), "rate": rng.randint(140, 190), "seed": seed * 100_003 + i}
            for i in range(n)]


def split_of(i: int, n: int) -> str:
    """Fixed split by position: the last 5% test, the 5% before them val, the rest train."""
    n_test = max(1, int(round(n * SPLIT_FRACTIONS["test"])))
    n_val = max(1, int(round(n * SPLIT_FRACTIONS["val"])))
    return "test" if i >= n - n_test else "val" if i >= n - n_test - n_val else "train"


# --- espeak-ng through ctypes (speak_lib.h) -------------------------------------------------------------
AUDIO_OUTPUT_SYNCHRONOUS = 2
espeakRATE, espeakPITCH = 1, 3
POS_CHARACTER = 1
espeakCHARS_AUTO = 0
SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class ESpeak:
    """A synchronous espeak-ng engine collecting samples through the synth callback (one per process)."""

    def __init__(self):
        import espeakng_loader
        self.lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        data = espeakng_loader.get_data_path().encode()
        self.rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, ctypes.c_char_p(data), 0)
        if self.rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.rate}) with data at {data.decode()}")
        self.libc = ctypes.CDLL(None)
        self.chunks: list[np.ndarray] = []
        self._cb = SYNTH_CALLBACK(self._collect)  # keep a reference: ctypes must not free it
        self.lib.espeak_SetSynthCallback(self._cb)

    def _collect(self, wav, n, events):
        if n > 0 and wav:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, text: str, voice: str, pitch: int, rate: int, seed: int = 0) -> np.ndarray:
        """int16 samples of `text` at self.rate Hz; `seed` fixes the noise of breathy voice variants."""
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        self.libc.srand(ctypes.c_uint(seed))
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng: voice {voice!r} not found")
        self.lib.espeak_SetParameter(espeakRATE, rate, 0)
        self.lib.espeak_SetParameter(espeakPITCH, pitch, 0)
        self.chunks = []
        buf = text.encode() + b"\0"
        err = self.lib.espeak_Synth(ctypes.c_char_p(buf), len(buf), 0, POS_CHARACTER, 0, espeakCHARS_AUTO,
                                    None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err}) on {text!r}")
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


def synthesize_shard(out_dir: str, specs_json: str) -> None:
    """Synthesise one shard's utterances into out_dir/wavs (run inside a fresh process)."""
    import soundfile as sf
    engine = ESpeak()
    for u in json.loads(specs_json):
        y = engine.say(u["text"], u["voice"], u["pitch"], u["rate"], u["seed"]).astype(np.float32) / 32768.0
        if engine.rate != SAMPLE_RATE:
            import librosa
            y = librosa.resample(y, orig_sr=engine.rate, target_sr=SAMPLE_RATE, res_type="polyphase")
        sf.write(str(Path(out_dir) / "wavs" / f"{u['id']}.wav"), y, SAMPLE_RATE, subtype="PCM_16")


def _run_shard(out: Path, specs: list[dict]) -> None:
    code = ("import sys; from diffsuite.modalities.audio.corpus import synthesize_shard; "
            "synthesize_shard(sys.argv[1], sys.stdin.read())")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], input=json.dumps(specs), text=True,
                          capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"espeak-ng shard synthesis failed:\n{proc.stderr[-2000:]}")


def build_corpus(out: Path, n: int, seed: int = 0, shard_size: int = 50, progress: bool = True) -> dict:
    """Write the corpus in LJSpeech layout under `out` and return its manifest."""
    from tqdm.auto import tqdm
    specs = utterances(n, seed)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    shards = [specs[i: i + shard_size] for i in range(0, n, shard_size)]
    for shard in tqdm(shards, desc="espeak-ng corpus", disable=not progress):
        _run_shard(out, shard)
    lines = [f"{u['id']}|{u['text']}|{u['text']}" for u in specs]
    atomic_write_bytes(out / "metadata.csv", ("\n".join(lines) + "\n").encode())
    for split in ("train", "val", "test"):
        ids = [u["id"] for i, u in enumerate(specs) if split_of(i, n) == split]
        atomic_write_bytes(out / "splits" / f"{split}.txt", ("\n".join(ids) + "\n").encode())
    files = {str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()
             and (p.suffix in (".wav", ".csv", ".txt"))}
    manifest = {"version": CORPUS_VERSION, "n": n, "seed": seed, "sample_rate": SAMPLE_RATE,
                "voices": list(VOICES), "files": files}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def corpus_path(n: int = 300, seed: int = 0, progress: bool = True) -> Path:
    """The cached built-in corpus of n utterances (built on first use)."""
    out = cache_dir("audio", f"espeak-v{CORPUS_VERSION}-n{n}-s{seed}")
    man = out / "manifest.json"
    if man.is_file():
        m = json.loads(man.read_text())
        if m.get("version") == CORPUS_VERSION and all((out / f).is_file() for f in m["files"]):
            return out
    build_corpus(out, n, seed, progress=progress)
    return out
