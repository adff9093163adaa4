"""Audio benchmark: vocoder quality on a held-out split, and synthesis speed against the reference DiffWave.

    python benchmarks/audio.py speed [--seconds 0.5 --threads 1]
    python benchmarks/audio.py quality RUN_OR_CHECKPOINT [--clips 8 --samplers fast ddpm ddim:6 dpmpp_2m:6 griffinlim]
    python benchmarks/audio.py quality RUN --split test --clips 15 --max-seconds 0 --listener --samplers reference ddpm
    python benchmarks/audio.py listen RUN DIR [--conditions reference ddpm fast noisevoc:4 --seed 0]
    python benchmarks/audio.py listen-score DIR [--machine RUN]
    python benchmarks/audio.py embedding RUN [--split val]

Quality metrics (reference audio vs. analysis-synthesis of its mel): log-mel L1 (hifigan mel), multi-resolution
STFT distance (Yamamoto et al. 2020, eq. 1-3: spectral convergence + log-magnitude L1, three resolutions),
mel-cepstral distortion (12 cepstra c1..c12 from a DCT of the log mel amplitude, speech frames, no DTW),
wide-band PESQ and STOI at 16 kHz (pesq / pystoi, when installed), and the real-time factor. `griffinlim[:iters]`
is a classical baseline from the same mel (librosa's mel inversion and Griffin-Lim phase, 64 iterations), not a model;
`glinit:K` is a diagnostic: the Griffin-Lim waveform noised to step K and denoised by the model (DDPM K..0);
`glnoise:K` is that noised waveform itself, before the model's K steps. `noisevoc:N` is a listening reference, not a
vocoder: the reference audio through an N-band noise vocoder (Shannon et al. 1995), which keeps each band's temporal
envelope and replaces all fine structure (harmonics included) by noise; listeners recognise most words of sentences
from as few as 3-4 such bands, so it shows what an intelligibility metric gives to speech known to be followable.
`reference` is the clip itself.

Intelligibility. `--listener` adds words_correct: the % of each sentence's words that an offline recogniser hears
(pocketsphinx's US-English model, trained on human speech; a trigram language model from the training transcripts).
`listen` writes a blinded test for a person (each held-out sentence once, in one condition, numbered clips at one
level, answers.txt to fill in, key.json apart); `listen-score` gives the words correct per condition.
Prints a table and writes JSON under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
MRSTFT_RES = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))


# --- metrics --------------------------------------------------------------------------------------------
def log_mel_l1(ref: np.ndarray, gen: np.ndarray, sr: int = 22050) -> float:
    """Mean |log mel(ref) - log mel(gen)| with the hifigan mel convention."""
    from diffsuite.modalities.audio.mel import convention, mel_spectrogram
    c = convention("hifigan", sample_rate=sr)
    a, b = (mel_spectrogram(torch.from_numpy(v).float(), c) for v in (ref, gen))
    return float((a - b).abs().mean())


def mrstft(ref: np.ndarray, gen: np.ndarray) -> float:
    """Multi-resolution STFT distance (Yamamoto et al. 2020, Parallel WaveGAN eq. 1-3), mean over resolutions."""
    total = 0.0
    for n_fft, hop, win in MRSTFT_RES:
        w = torch.hann_window(win, dtype=torch.float64)
        S, G = (torch.stft(torch.from_numpy(v).double(), n_fft, hop, win, w, return_complex=True).abs()
                .clamp(min=1e-7) for v in (ref, gen))
        sc = torch.linalg.norm(S - G) / torch.linalg.norm(S)
        total += float(sc + (S.log() - G.log()).abs().mean())
    return total / len(MRSTFT_RES)


def mcd(ref: np.ndarray, gen: np.ndarray, sr: int = 22050, n_cep: int = 13, speech_db: float = 40.0) -> float:
    """Mel-cepstral distortion in dB, (10 / ln 10) sqrt(2 sum_{d=1}^{n_cep-1} (c_d - c'_d)^2), mean over speech frames.

    Cepstra: DCT-II of the natural-log hifigan mel amplitude (scaled as cepstral coefficients); frames are aligned (analysis-synthesis,
    no DTW); speech frames are those whose reference mel energy is within `speech_db` dB of the loudest frame.
    """
    from scipy.fft import dct
    from diffsuite.modalities.audio.mel import convention, mel_spectrogram
    c = convention("hifigan", sample_rate=sr)
    la, lb = (mel_spectrogram(torch.from_numpy(v).float(), c).double().numpy() for v in (ref, gen))
    # c_d with log|X(w)| = c_0 + 2 sum_d c_d cos(d w) on the mel axis: unnormalised DCT-II / (2 N)
    ca, cb = (dct(v, type=2, axis=0)[1:n_cep] / (2 * v.shape[0]) for v in (la, lb))
    energy_db = 20 / math.log(10) * la.mean(axis=0)
    speech = energy_db >= energy_db.max() - speech_db
    dist = 10 / math.log(10) * np.sqrt(2 * np.sum((ca - cb) ** 2, axis=0))
    return float(dist[speech].mean())


def to_16k(y: np.ndarray, sr: int) -> np.ndarray:
    """y resampled to 16 kHz (float64), the rate of PESQ-WB, STOI and the speech recogniser."""
    import librosa
    return librosa.resample(np.asarray(y, np.float64), orig_sr=sr, target_sr=16000)


def pesq_stoi(ref: np.ndarray, gen: np.ndarray, sr: int) -> dict:
    """Wide-band PESQ and STOI after resampling both signals to 16 kHz (None where the package is missing)."""
    a, b = to_16k(ref, sr), to_16k(gen, sr)
    out = {"pesq_wb": None, "stoi": None}
    try:
        from pesq import pesq
        out["pesq_wb"] = float(pesq(16000, a, b, "wb"))
    except ImportError:
        pass
    except Exception as e:  # noqa: BLE001 - PESQ refuses e.g. silent input; report, do not crash
        print(f"pesq failed: {e}", file=sys.stderr)
    try:
        from pystoi import stoi
        out["stoi"] = float(stoi(a, b, 16000, extended=False))
    except ImportError:
        pass
    return out


# --- speed ----------------------------------------------------------------------------------------------
def _timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def reference_synthesis(model, mel, train_betas, infer_betas, generator, device="cpu"):
    """The reference package's sampling loop (diffwave/inference.py `predict`), on its own model. The fractional steps of
    a shorter inference schedule are `fast_schedule`'s (tested equal to the reference's alignment)."""
    from diffsuite.modalities.audio.task import fast_schedule
    beta = np.asarray(infer_betas)
    alpha, ab = 1 - beta, np.cumprod(1 - beta)
    fractional = len(beta) != len(train_betas)
    T = fast_schedule(train_betas, infer_betas)[0].flip(0).tolist() if fractional else None
    audio = torch.randn(mel.shape[0], 256 * mel.shape[-1], generator=generator).to(device)
    for n in range(len(alpha) - 1, -1, -1):
        step = torch.tensor([T[n]] if fractional else [n], device=device,
                            dtype=torch.float32 if fractional else torch.long)
        eps = model(audio, mel, step).squeeze(1)
        audio = (audio - beta[n] / (1 - ab[n]) ** .5 * eps) / alpha[n] ** .5
        if n > 0:
            z = torch.randn(audio.shape, generator=generator).to(device)
            audio += ((1 - ab[n - 1]) / (1 - ab[n]) * beta[n]) ** .5 * z
        audio = audio.clamp(-1, 1)
    return audio


def _configs(args) -> list[tuple[str, str, bool]]:
    """(device, dtype, compile) to measure: the CPU always, CUDA when present (or asked for)."""
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    return [(d, dt, c == "on") for d in devices for dt in args.dtypes for c in args.compile]


def _synced(fn, device):
    def run():
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out
    return run


def speed(args) -> dict:
    """RTF of base DiffWave (random weights) at 50 steps and the 6-step schedule, ours vs. the reference, per device,
    dtype (fp32, or bf16 autocast) and torch.compile on / off. Warm-up calls first (every run where compile or CUDA is
    on, else the 6-step runs, which build the same kernels); then --repeats rounds in alternating order, best of each."""
    from diffsuite.core.denoiser import Denoiser
    from diffsuite.core.schedules import make_schedule
    from diffsuite.modalities.audio.diffwave import PRESETS, build_diffwave
    from diffsuite.modalities.audio.task import synthesize
    torch.set_num_threads(args.threads)
    p = PRESETS["base"]
    frames = int(args.seconds * 22050) // 256
    audio_s = frames * 256 / 22050
    train_betas = np.linspace(p["beta_start"], p["beta_end"], p["T"]).tolist()
    try:
        from diffwave.model import DiffWave as Ref
        from diffwave.params import AttrDict, params
    except ImportError as e:
        Ref = None
        print(f"reference diffwave not importable ({e}); skipping its rows", file=sys.stderr)
    rows = []
    for device, dtype, comp in _configs(args):
        torch.manual_seed(0)
        mel = torch.rand(1, 80, frames, device=device)
        ours = build_diffwave("base").eval().to(device)
        for q in ours.parameters():
            q.data.normal_(0, 0.02)
        schedule = make_schedule("linear", p["T"], beta_start=p["beta_start"], beta_end=p["beta_end"])
        den = Denoiser(ours, schedule).to(device)
        runs = [("diffsuite", label, lambda sampler=sampler, fb=fb: synthesize(
                    den, frames * 256, mel, sampler, None, torch.Generator().manual_seed(0), fb, device=device))
                for label, sampler, fb in (("50 steps", "ddpm", None), ("6-step fast", "fast", p["fast_betas"]))]
        nets = [ours]
        if Ref is not None:
            ref = Ref(AttrDict(dict(params))).eval().to(device)
            for q in ref.parameters():
                q.data.normal_(0, 0.02)
            nets.append(ref)
            runs += [("reference diffwave", label, lambda ib=ib: reference_synthesis(
                         ref, mel, train_betas, ib, torch.Generator().manual_seed(0), device))
                     for label, ib in (("50 steps", train_betas), ("6-step fast", p["fast_betas"]))]
        if comp:
            for net in nets:
                net.compile()
        amp = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16")
        fns = [_synced(fn, device) for _, _, fn in runs]
        best, warm = [float("inf")] * len(runs), [None] * len(runs)
        with torch.inference_mode(), amp:
            for i, fn in enumerate(fns):  # kernels built, graphs compiled (all runs) or primed (the cheap 6-step ones)
                if comp or device != "cpu" or runs[i][1] == "6-step fast":
                    warm[i] = _timed(fn)
            for rep in range(args.repeats):  # alternating order, so no run always goes first
                for i in (range(len(fns)) if rep % 2 == 0 else reversed(range(len(fns)))):
                    best[i] = min(best[i], _timed(fns[i]))
        for (impl, label, _), t, w in zip(runs, best, warm):
            rows.append({"impl": impl, "schedule": label, "device": device, "dtype": dtype, "compile": comp,
                         "seconds": t, "rtf": t / audio_s, "x_real_time": audio_s / t, "warmup_seconds": w})
    return {"audio_seconds": audio_s, "threads": args.threads, "rows": rows, "ours_over_reference": _speedups(rows)}


def _speedups(rows) -> dict:
    """Per (device, dtype, compile, schedule): the reference's time over ours (> 1: we are faster)."""
    key = lambda r: f"{r['device']} {r['dtype']} compile={r['compile']} {r['schedule']}"
    ref = {key(r): r["seconds"] for r in rows if r["impl"] != "diffsuite"}
    return {key(r): ref[key(r)] / r["seconds"] for r in rows if r["impl"] == "diffsuite" and key(r) in ref}


# --- quality --------------------------------------------------------------------------------------------
def _parse_sampler(s: str):
    """'name[:steps[:spacing]]', e.g. 'ddim:6:trailing'."""
    name, _, rest = s.partition(":")
    steps, _, spacing = rest.partition(":")
    return name, int(steps) if steps else None, spacing or None


def fit(y: np.ndarray, n: int) -> np.ndarray:
    """y zero-padded or cut to n samples."""
    return np.pad(y, (0, max(0, n - len(y))))[:n]


def griffin_lim(mel: torch.Tensor, model, n_iter: int = 64) -> np.ndarray:
    """Classical baseline from the same mel (no training): librosa's mel inversion + Griffin-Lim phase (seeded), hifigan
    convention, shifted by (n_fft - hop) / 2 - n_fft / 2 samples to undo librosa's centred frames."""
    from diffsuite.modalities.audio.task import mel_convention
    import librosa
    c = mel_convention(model)
    if c.name != "hifigan":
        raise ValueError(f"griffin_lim: only the 'hifigan' mel convention, not {c.name!r}")
    S = librosa.feature.inverse.mel_to_stft(mel.exp().numpy(), sr=c.sample_rate, n_fft=c.n_fft, power=1.0,
                                            fmin=c.fmin, fmax=c.f_max)
    y = librosa.griffinlim(S, n_iter=n_iter, hop_length=c.hop, win_length=c.win, random_state=0)  # seeded phase init
    shift = c.n_fft // 2 - (c.n_fft - c.hop) // 2
    return np.concatenate([np.zeros(shift, np.float32), y.astype(np.float32)])


def glinit(denoiser, model, mel: torch.Tensor, k: int, seed: int, denoise: bool = True) -> np.ndarray:
    """Diagnostic: shallow diffusion from Griffin-Lim (DiffSinger's shallow mechanism): noise the GL waveform to step k
    by q(x_k | x_GL) and run ancestral DDPM k..0, so only the model's low-noise denoising is exercised.
    denoise=False returns x_k itself (`glnoise:K`): what the model's k steps start from."""
    from diffsuite.core.samplers import sample
    from diffsuite.modalities.audio.task import unwhiten, whiten
    n = mel.shape[-1] * model.hop_length
    x = torch.from_numpy(fit(griffin_lim(mel, model), n))[None, None]
    cond, net = mel[None], denoiser.net
    y = whiten(x, net, cond)
    gen = torch.Generator().manual_seed(seed)
    ab = float(denoiser.schedule.alpha_bar[k])
    y_k = ab ** 0.5 * y + (1 - ab) ** 0.5 * torch.randn(y.shape, generator=gen)
    out = y_k
    if denoise:
        out = sample(denoiser, y_k.shape, "ddpm", None, generator=gen, cond=cond, x_T=y_k,
                     timesteps=torch.arange(k, -1, -1), variance="beta_tilde")
    return unwhiten(out, net, cond)[0, 0].clamp(-1, 1).numpy()


def noise_vocoder(y: np.ndarray, sr: int, n_bands: int, seed: int, lo: float = 100.0, hi: float = 8000.0,
                  env_hz: float = 160.0) -> np.ndarray:
    """Shannon et al. 1995 (Science 270:303): split y into n_bands log-spaced bands (4th-order Butterworth, zero phase),
    take each band's envelope (half-wave rectified, low-passed at env_hz), let it modulate noise filtered into the same
    band, filter again and sum; the output has y's RMS."""
    from scipy.signal import butter, sosfiltfilt
    edges = np.geomspace(lo, hi, n_bands + 1)
    noise = np.random.default_rng(seed).standard_normal(len(y))
    smooth = butter(2, env_hz, btype="low", fs=sr, output="sos")
    out = np.zeros(len(y))
    for f1, f2 in zip(edges[:-1], edges[1:]):
        band = butter(4, (f1, f2), btype="band", fs=sr, output="sos")
        envelope = np.clip(sosfiltfilt(smooth, np.maximum(sosfiltfilt(band, y), 0.0)), 0.0, None)
        out += sosfiltfilt(band, envelope * sosfiltfilt(band, noise))
    return (out * np.sqrt(np.mean(y.astype(np.float64) ** 2) / max(np.mean(out ** 2), 1e-20))).astype(np.float32)


def transcripts(files: list[Path]) -> dict[Path, str]:
    """Each clip's sentence from the LJSpeech layout's metadata.csv beside its wavs/ folder (the listening tests need
    the sentences, so they take data in that layout)."""
    from diffsuite.modalities.audio.data import ljspeech_metadata
    tables, out = {}, {}
    for f in map(Path, files):
        root = f.parent.parent
        if root not in tables:
            tables[root] = dict(ljspeech_metadata(root))
        if not tables[root].get(f.stem):
            raise ValueError(f"listening test: {root / 'metadata.csv'} has no sentence for {f.stem!r} ({f})")
        out[f] = tables[root][f.stem]
    return out


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped."""
    return "".join(ch if ch.isalnum() or ch in "' " else " " for ch in text.lower()).split()


def words_correct(ref: str, heard: str) -> int:
    """Reference words the listener reported in order: the longest common subsequence of the two word lists."""
    a, b = words(ref), words(heard)
    row = [0] * (len(b) + 1)
    for wa in a:
        prev_diag, row[0] = 0, 0
        for j, wb in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if wa == wb else max(row[j], row[j - 1])
    return row[-1]


def percent_heard(sentences: list[str], heard: list[str]) -> float:
    """% of the sentences' words heard, pooled over sentences. Scored against the next clip's sentence instead
    (`words_chance`), it measures what words common to many sentences give for free."""
    return 100.0 * sum(map(words_correct, sentences, heard)) / sum(len(words(s)) for s in sentences)


def arpa_trigram(sentences: list[str], discount: float = 0.5) -> str:
    """Trigram language model in ARPA format from sentences' words: absolute discounting with Katz-style backoff (Ney,
    Essen and Kneser 1994): a seen word keeps (count - D) / count(history); the freed mass goes to the lower order,
    scaled by the history's backoff weight so that every conditional distribution sums to one."""
    counts = [{}, {}, {}]
    for sentence in sentences:
        w = ["<s>", *words(sentence), "</s>"]
        for n in range(3):
            for i in range(len(w) - n):
                counts[n][tuple(w[i:i + n + 1])] = counts[n].get(tuple(w[i:i + n + 1]), 0) + 1
    total = sum(c for k, c in counts[0].items() if k != ("<s>",))
    prob = [{k: c / total for k, c in counts[0].items() if k != ("<s>",)}, {}, {}]
    for n in (1, 2):
        history = {}
        for k, c in counts[n].items():
            history[k[:-1]] = history.get(k[:-1], 0) + c
        prob[n] = {k: (c - discount) / history[k[:-1]] for k, c in counts[n].items()}

    def p(k):
        """P(k[-1] | k[:-1]) with backoff."""
        return prob[len(k) - 1].get(k) or (backoff[len(k) - 2].get(k[:-1], 1.0) * p(k[1:]) if len(k) > 1 else 0.0)

    backoff = [{}, {}]
    for n in (1, 2):
        seen = {}
        for k in prob[n]:
            seen.setdefault(k[:-1], []).append(k)
        for h, ks in seen.items():
            free, lower = 1 - sum(prob[n][k] for k in ks), 1 - sum(p(k[1:]) for k in ks)
            backoff[n - 1][h] = free / lower if lower > 1e-12 else 1.0
    log = lambda x: math.log10(x) if x > 0 else -99.0
    lines = ["\\data\\", *(f"ngram {n + 1}={len(counts[n])}" for n in range(3))]
    for n in range(3):
        lines += ["", f"\\{n + 1}-grams:"]
        for k in sorted(counts[n]):
            bo = f" {log(backoff[n][k]):.6f}" if n < 2 and k in backoff[n] else ""
            lines.append(f"{-99.0 if k == ('<s>',) else log(prob[n][k]):.6f} {' '.join(k)}{bo}")
    return "\n".join(lines + ["", "\\end\\", ""])


def pronunciations(vocabulary: list[str], cmudict: Path) -> str:
    """CMUdict lines for each word (alternatives included); British -our spellings fall back to the US -or entry."""
    entries = {}
    for line in cmudict.read_text(encoding="utf-8").splitlines():
        head, _, phones = line.partition(" ")
        entries.setdefault(head.split("(")[0], []).append(phones.strip())
    out, missing = [], []
    for w in vocabulary:
        phones = entries.get(w) or entries.get(w.replace("our", "or"))
        if phones is None:
            missing.append(w)
            continue
        out += [f"{w}{'' if i == 0 else f'({i + 1})'} {ph}" for i, ph in enumerate(phones)]
    if missing:
        raise ValueError(f"machine listener: no pronunciation in {cmudict} for {missing}")
    return "\n".join(out) + "\n"


class MachineListener:
    """A stand-in listener: pocketsphinx's US-English acoustic model (trained on human speech, nothing from this
    project), CMUdict pronunciations, and a trigram language model from the training transcripts only."""

    def __init__(self, train_sentences: list[str]):
        from pocketsphinx import Decoder, get_model_path
        model = Path(get_model_path()) / "en-us"
        vocabulary = sorted({w for s in train_sentences for w in words(s)})
        with tempfile.TemporaryDirectory(prefix="listener-") as tmp:  # read once, when the decoder is built
            lm, lexicon = Path(tmp) / "train.lm", Path(tmp) / "train.dict"
            lm.write_text(arpa_trigram(train_sentences))
            lexicon.write_text(pronunciations(vocabulary, model / "cmudict-en-us.dict"))
            self.decoder = Decoder(samprate=16000, lm=str(lm), dict=str(lexicon), beam=1e-60, wbeam=1e-40,
                                   pbeam=1e-60, loglevel="FATAL")

    @classmethod
    def for_run(cls, loaded) -> "MachineListener":
        """A listener whose language model comes from a loaded run's training transcripts."""
        return cls(list(transcripts(loaded.task._files(loaded.recipe.data, "train")).values()))

    def __call__(self, y: np.ndarray, sr: int) -> str:
        """The words heard in y (resampled to 16 kHz, peak-normalised to 0.5)."""
        y = to_16k(y, sr)
        pcm = (y / max(float(np.abs(y).max()), 1e-9) * 0.5 * 32767).astype(np.int16).tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


def render(spec: str, loaded, y: np.ndarray, mel: torch.Tensor, seed: int) -> np.ndarray:
    """One condition's waveform for the reference clip y and its mel, cut or padded to len(y): `reference` (y itself),
    `griffinlim[:iters]`, `noisevoc[:bands]`, `glinit:K` / `glnoise:K`, or a sampler `name[:steps[:spacing]]`."""
    from diffsuite.modalities.audio.task import vocode_mel
    name, steps, spacing = _parse_sampler(spec)
    model = loaded.recipe.model
    with torch.inference_mode():
        if name == "reference":
            g = y
        elif name == "griffinlim":
            g = griffin_lim(mel, model, steps or 64)
        elif name == "noisevoc":
            g = noise_vocoder(y, model.sample_rate, steps or 4, seed=seed)
        elif name in ("glinit", "glnoise"):
            g = glinit(loaded.denoiser, model, mel, steps or 2, seed=seed, denoise=name == "glinit")
        else:
            g = vocode_mel(loaded.denoiser, model, mel, name, steps, seed=seed, spacing=spacing)[0].numpy()
    return fit(np.asarray(g, np.float32), len(y))


def quality(args) -> dict:
    """Analysis-synthesis of held-out clips with a trained vocoder, per sampler."""
    from diffsuite.recipes.run import load
    from diffsuite.modalities.audio.data import load_audio
    from diffsuite.modalities.audio.task import wav_to_mel
    torch.set_num_threads(args.threads)
    loaded = load(args.checkpoint, ema=args.weights == "ema")
    r, task = loaded.recipe, loaded.task
    files = task._files(r.data, args.split)[: args.clips]
    sr = r.model.sample_rate
    if args.listener and args.max_seconds:
        raise ValueError("quality --listener scores whole sentences: pass --max-seconds 0 (clips uncut)")
    listener = MachineListener.for_run(loaded) if args.listener else None
    text = transcripts(files) if listener else {}
    rows = []
    for spec in args.samplers:
        per, synth_s, audio_s, heard = [], 0.0, 0.0, []
        for i, f in enumerate(files):
            y = load_audio(f, sr)[: int(args.max_seconds * sr) or None]
            mel = wav_to_mel(y, r.model)
            t0 = time.perf_counter()
            g = render(spec, loaded, y, mel, seed=i)
            synth_s += time.perf_counter() - t0
            audio_s += len(y) / sr
            per.append({"log_mel_l1": log_mel_l1(y, g, sr), "mrstft": mrstft(y, g), "mcd": mcd(y, g, sr),
                        **pesq_stoi(y, g, sr)})
            if listener:
                heard.append(listener(g, sr))
        mean = {k: (float(np.mean([p[k] for p in per])) if per[0][k] is not None else None) for k in per[0]}
        if listener:
            mean["words_correct"] = percent_heard([text[f] for f in files], heard)
            mean["words_chance"] = percent_heard([text[f] for f in files[1:] + files[:1]], heard)
        rows.append({"sampler": spec, **mean, "rtf": synth_s / audio_s, "clips": len(files)})
    return {"checkpoint": str(loaded.checkpoint), "step": loaded.step, "weights": args.weights, "split": args.split,
            "threads": args.threads, "max_seconds": args.max_seconds, "rows": rows}


def step_embeddings(args) -> dict:
    """Diagnostic of the step embedding at the fast schedule's fractional steps, on one checkpoint's weights: the
    eps-MSE at each fractional step (with the alpha_bar the schedule aligns it to) and at the integer step below it,
    and the fast schedule's MR-STFT with each embedding (`lerp`, `sinusoid`) and with its steps rounded (`rounded`)."""
    import warnings
    from diffsuite.core.samplers import sample
    from diffsuite.recipes.run import load
    from diffsuite.modalities.audio.data import load_audio
    from diffsuite.modalities.audio.diffwave import StepEmbedding, preset
    from diffsuite.modalities.audio.task import ExplicitAlphaBars, fast_schedule, unwhiten, wav_to_mel, whiten
    torch.set_num_threads(args.threads)
    loaded = load(args.checkpoint, ema=True)
    r, den = loaded.recipe, loaded.denoiser
    ts, abs_ = fast_schedule(den.schedule.betas.tolist(), preset(r.model.preset)["fast_betas"])
    probe = sorted({(t, ab) for t, ab in zip(ts.tolist(), abs_.tolist()) if t > 0}
                   | {(math.floor(t), float(den.schedule.alpha_bar[math.floor(t)])) for t in ts.tolist() if t > 0})
    embeds = [m for m in den.modules() if isinstance(m, StepEmbedding)]
    loss = {mode: {t: [] for t, _ in probe} for mode in ("lerp", "sinusoid")}
    mrs = {"lerp": [], "sinusoid": [], "rounded": []}
    for i, f in enumerate(loaded.task._files(r.data, args.split)[: args.clips]):
        y = load_audio(f, r.model.sample_rate)[: int(args.max_seconds * r.model.sample_rate)]
        mel = wav_to_mel(y, r.model)
        n = mel.shape[-1] * r.model.hop_length
        y, cond = fit(y, n), mel[None]
        x0 = whiten(torch.from_numpy(y)[None, None], den.net, cond)
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(i))
        for mode in ("lerp", "sinusoid"):
            for m in embeds:
                m.mode = mode
            with torch.inference_mode():
                for t, ab in probe:
                    net = ExplicitAlphaBars(den, torch.tensor([t], dtype=torch.float64), torch.tensor([ab]))
                    pred = net(ab ** 0.5 * x0 + (1 - ab) ** 0.5 * eps, torch.tensor([t]), cond)
                    loss[mode][t].append(float(((pred.eps - eps) ** 2).mean()))
            with warnings.catch_warnings():  # the direct sinusoid's warning: that is what is measured here
                warnings.simplefilter("ignore")
                mrs[mode].append(mrstft(y, render("fast", loaded, y, mel, seed=i)))
        with torch.inference_mode():  # the schedule's steps rounded to training steps, where both embeddings agree
            x = sample(den, (1, 1, n), "ddpm", None, cond=cond, timesteps=ts.round(), variance="beta_tilde",
                       generator=torch.Generator().manual_seed(i))
        mrs["rounded"].append(mrstft(y, unwhiten(x, den.net, cond)[0, 0].clamp(-1, 1).numpy()))
    rows = [{"sampler": f"fast ({k})", "mrstft": float(np.mean(v))} for k, v in mrs.items()]
    return {"checkpoint": str(loaded.checkpoint), "split": args.split, "fast_timesteps": ts.tolist(), "rows": rows,
            "eps_mse": {mode: {f"{t:g}": float(np.mean(v)) for t, v in d.items()} for mode, d in loss.items()}}


def listening_pack(args) -> dict:
    """A blinded word-recognition test for a person, after matrix sentence tests (Hagerman 1982; Wagener et al. 1999):
    every held-out sentence is heard once, in one condition (rotated by --seed), under a shuffled number, at one RMS
    level; key.json holds the answers. Fill in answers.txt, then run `listen-score`."""
    import soundfile as sf
    from diffsuite.recipes.run import load
    from diffsuite.modalities.audio.data import load_audio
    from diffsuite.modalities.audio.task import wav_to_mel
    torch.set_num_threads(args.threads)
    loaded = load(args.checkpoint, ema=True)
    r, task = loaded.recipe, loaded.task
    files = [f for split in args.splits for f in task._files(r.data, split)]
    if not files:
        raise ValueError(f"listening test: no clips in the {' + '.join(args.splits)} split(s) of {r.data.source}")
    text, sr, out = transcripts(files), r.model.sample_rate, Path(args.dir)
    if (out / "key.json").exists():
        raise FileExistsError(f"listening test: {out} already holds one (key.json); choose another folder")
    (out / "clips").mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(args.seed).permutation(len(files))
    key = []
    for n, k in enumerate(order.tolist(), 1):
        condition = args.conditions[(k + args.seed) % len(args.conditions)]
        y = load_audio(files[k], sr)
        g = render(condition, loaded, y, wav_to_mel(y, r.model), seed=k)
        g = g * (0.05 / max(float(np.sqrt(np.mean(g.astype(np.float64) ** 2))), 1e-6))
        sf.write(out / "clips" / f"{n:02d}.flac", np.clip(g, -1, 1), sr)
        key.append({"clip": f"{n:02d}", "condition": condition, "id": files[k].stem, "sentence": text[files[k]]})
        print(f"{n:02d}/{len(files)}", flush=True)
    vocabulary = sorted({w for sentence in transcripts(task._files(r.data, None)).values() for w in words(sentence)})
    (out / "key.json").write_text(json.dumps({"checkpoint": str(loaded.checkpoint), "step": loaded.step,
                                              "conditions": args.conditions, "seed": args.seed, "clips": key}, indent=1))
    (out / "answers.txt").write_text("".join(f"{c['clip']}: \n" for c in key))
    (out / "INSTRUCTIONS.txt").write_text(
        f"Listening test: {len(key)} short sentences in clips/ (FLAC, {sr} Hz), numbered 01-{len(key):02d}. "
        "Do not open key.json.\n"
        "Play each clip once or twice, in order, and after its number in answers.txt type the words you heard\n"
        "(guess when unsure; leave the line blank if you heard nothing). Then run:\n"
        f"    python benchmarks/audio.py listen-score {out}\n"
        f"Every sentence uses only these {len(vocabulary)} words:\n" + " ".join(vocabulary) + "\n")
    return {"dir": str(out), "clips": len(key), "conditions": args.conditions}


def machine_answers(pack: Path, checkpoint: str) -> Path:
    """The pack's answers as the machine listener hears them (its language model from the checkpoint's training
    transcripts), written to answers_machine.txt."""
    import soundfile as sf
    from diffsuite.recipes.run import load
    listener = MachineListener.for_run(load(checkpoint, ema=True))
    lines = [f"{c.stem}: {listener(*sf.read(c))}" for c in sorted((pack / "clips").glob("*.flac"))]
    (pack / "answers_machine.txt").write_text("\n".join(lines) + "\n")
    return pack / "answers_machine.txt"


def listening_score(args) -> dict:
    """Words correct per condition (reference words reported in order) from a filled-in listening pack."""
    out = Path(args.dir)
    key = {c["clip"]: c for c in json.loads((out / "key.json").read_text())["clips"]}
    answers = machine_answers(out, args.machine) if args.machine else out / "answers.txt"
    heard = {}
    for i, line in enumerate(answers.read_text(encoding="utf-8").splitlines(), 1):
        number, sep, answer = line.partition(":")
        if not line.strip():
            continue
        if not sep or number.strip() not in key:
            raise ValueError(f"{answers} line {i}: expected 'NN: words heard' with NN one of the clip "
                             f"numbers 01-{len(key):02d}, got {line!r}")
        heard[number.strip()] = answer
    missing = sorted(set(key) - set(heard))
    if missing:
        raise ValueError(f"{answers}: no line for clip(s) {', '.join(missing)} (a blank answer is 'NN: ')")
    rows = {}
    for clip, c in key.items():
        row = rows.setdefault(c["condition"], {"condition": c["condition"], "sentences": 0, "words": 0, "correct": 0})
        row["sentences"] += 1
        row["words"] += len(words(c["sentence"]))
        row["correct"] += words_correct(c["sentence"], heard[clip])
    for row in rows.values():
        row["percent_correct"] = 100.0 * row["correct"] / row["words"]
    return {"dir": str(out), "answers": answers.name, "rows": list(rows.values())}


def _print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    print(" | ".join(f"{k:>14}" for k in keys))
    for row in rows:
        print(" | ".join(f"{v:>14.4f}" if isinstance(v, float) else f"{str(v):>14}" for v in row.values()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--seconds", type=float, default=0.5)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--repeats", type=int, default=1)
    s.add_argument("--device", default="auto", help="cpu, cuda, or auto (the CPU, and CUDA when present)")
    s.add_argument("--dtypes", nargs="+", default=["fp32"], choices=("fp32", "bf16"))
    s.add_argument("--compile", nargs="+", default=["off"], choices=("off", "on"),
                   help="torch.compile: off, on, or both (--compile off on)")
    q = sub.add_parser("quality")
    q.add_argument("checkpoint")
    q.add_argument("--split", default="test")
    q.add_argument("--clips", type=int, default=8)
    q.add_argument("--max-seconds", type=float, default=3.0, help="cut clips to this length (0: whole clips)")
    q.add_argument("--listener", action="store_true",
                   help="add words_correct: %% of the sentences' words a speech recogniser (pocketsphinx, with a "
                        "language model from the training transcripts) hears, and words_chance: the same words "
                        "scored against the next clip's sentence; needs --max-seconds 0")
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--weights", choices=("ema", "model"), default="ema", help="EMA weights or the raw trained ones")
    q.add_argument("--samplers", nargs="+", default=["fast", "ddpm", "ddim:6", "dpmpp_2m:6"])
    for sp in (s, q):
        sp.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/audio_<command>.json)")
    lp = sub.add_parser("listen", help="write a blinded listening test (clips, answers.txt, key.json) to DIR")
    lp.add_argument("checkpoint")
    lp.add_argument("dir")
    lp.add_argument("--splits", nargs="+", default=["val", "test"])
    lp.add_argument("--conditions", nargs="+", default=["reference", "ddpm", "fast", "noisevoc:4"])
    lp.add_argument("--seed", type=int, default=0, help="shuffles the order and rotates the conditions (one per listener)")
    lp.add_argument("--threads", type=int, default=1)
    e = sub.add_parser("embedding", help="diagnose the step embedding at the fast schedule's fractional steps")
    e.add_argument("checkpoint")
    e.add_argument("--split", default="val")
    e.add_argument("--clips", type=int, default=8)
    e.add_argument("--max-seconds", type=float, default=3.0)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--out", default=None)
    ls = sub.add_parser("listen-score", help="words correct per condition from DIR's filled-in answers.txt")
    ls.add_argument("dir")
    ls.add_argument("--machine", metavar="RUN", default=None,
                    help="score the machine listener instead (its language model from RUN's training transcripts)")
    args = p.parse_args(argv)
    if args.cmd == "listen":
        print(json.dumps(listening_pack(args)))
        return 0
    commands = {"speed": speed, "quality": quality, "embedding": step_embeddings, "listen-score": listening_score}
    result = commands[args.cmd](args)
    result.update(torch=torch.__version__, machine=platform.processor() or platform.machine())
    _print_table(result["rows"])
    if args.cmd == "listen-score":
        out = Path(args.dir) / ("score_machine.json" if args.machine else "score.json")
    else:
        out = Path(args.out) if args.out else RESULTS / f"audio_{args.cmd}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
