"""`diffsuite vocode CHECKPOINT --wav IN.wav | --mel MEL.npy`: waveform synthesis with a trained DiffWave vocoder."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from diffsuite.core.config import ConfigError, positive_int
from diffsuite.core.utils import check_finite


def add_commands(subparsers) -> None:
    v = subparsers.add_parser("vocode", help="audio: mel -> waveform with a DiffWave vocoder checkpoint")
    v.add_argument("checkpoint", help="checkpoint folder or run folder")
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--wav", help="analysis-synthesis: audio -> mel -> audio")
    src.add_argument("--mel", help="a .npy mel (n_mels, frames) in the vocoder's convention")
    v.add_argument("--steps", type=positive_int, default=None, help="sampler steps (default: the fast 6-step schedule)")
    v.add_argument("--sampler", default=None, help="fast (DiffWave Appendix B; the default) | ddpm | ddim | dpmpp_2m | "
                   "... (a distilled student's default: its own sampler)")
    v.add_argument("--spacing", default=None,
                   help="timestep spacing of a core sampler: leading | trailing | linspace | logsnr | quadratic | power (default: its own)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", default=None, help="output WAV file, or a folder (an existing one, or a path ending in /"
                   " or without a suffix) to write <input>.vocoded.wav into (default: next to the input); never the "
                   "input itself")
    v.add_argument("--no-ema", action="store_true")
    v.set_defaults(func=cmd_vocode)

    t = subparsers.add_parser("transfer", help="audio: play a recording as another instrument (a timbre checkpoint)")
    t.add_argument("checkpoint", help="a timbre transfer run (task timbre)")
    t.add_argument("--wav", required=True, help="the recording (WAV / FLAC, any length, rate or channel count)")
    t.add_argument("--out", required=True, help="output WAV (a PNG of the spectrograms is written beside it)")
    t.add_argument("--vocoder", default=None, help="a DiffWave run in the difftransfer mel convention (default: "
                   "Griffin-Lim)")
    t.add_argument("--target", default=None, help="the target recording, drawn beside the output for comparison")
    t.add_argument("--steps", type=positive_int, default=None)
    t.add_argument("--overlap", type=int, default=None, help="patch overlap in frames (default a quarter patch)")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_transfer)


def _input_mel(args, model):
    """(mel tensor, input waveform or None, input path)."""
    import torch
    from .data import load_audio
    from .task import wav_to_mel
    path = Path(args.wav or args.mel)
    flag = "--wav" if args.wav else "--mel"
    if not path.is_file():
        raise ConfigError(f"{flag}: file not found: {path}")
    if args.wav:
        try:
            y = load_audio(path, model.sample_rate)
        except Exception as e:  # soundfile / librosa: any unreadable or empty file
            raise ConfigError(f"--wav {path}: cannot read it as audio ({type(e).__name__}: {e}); expected a WAV or "
                              "FLAC file") from e
        return wav_to_mel(y, model), y, path
    try:
        mel = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ConfigError(f"--mel {path}: not a .npy array ({e})") from e
    if not np.issubdtype(mel.dtype, np.number):
        raise ConfigError(f"--mel {path}: expected a numeric (n_mels, frames) array, got dtype {mel.dtype}")
    return torch.from_numpy(mel.astype(np.float32)), None, path


def output_path(out: str | None, src: Path) -> Path:
    """Where the WAV goes: --out as a file, or as a folder (existing, ending in a separator, or without a suffix) that
    receives <input stem>.vocoded.wav; by default next to the input. Writing over the input is refused."""
    name = src.with_suffix(".vocoded.wav").name
    if out is None:
        dest = src.with_name(name)
    elif Path(out).is_dir() or out.endswith(("/", "\\")) or not Path(out).suffix:
        dest = Path(out) / name
    else:
        dest = Path(out)
    for p in (dest, dest.with_suffix(".png")):
        if p.resolve() == src.resolve():
            raise ConfigError(f"--out {out}: it would write over the input {src}; choose another file or a folder")
    if dest.suffix.lower() not in (".wav", ".flac"):
        raise ConfigError(f"--out {out}: expected a .wav or .flac file or a folder")
    return dest


def cmd_vocode(args) -> int:
    """Handler of `diffsuite vocode`; a bad input (wrong mel shape or range) is reported with exit code 2."""
    try:
        return _vocode(args)
    except ValueError as e:  # the mel checks (mel.check_mel) and the model's own input checks
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"vocode: {e}") from e


def _vocode(args) -> int:
    import soundfile as sf
    import torch
    from .task import save_spectrograms, vocode_mel, wav_to_mel
    loaded = args.load(args.checkpoint, ema=not args.no_ema, task="audio", command="diffsuite vocode")
    model = loaded.recipe.model
    if not model.conditional:
        raise ValueError(f"{args.checkpoint}: an unconditional model cannot vocode (model.conditional=false)")
    mel, y_in, src = _input_mel(args, model)
    s = loaded.recipe.sample  # a distilled student or a DDGAN samples with its own sampler unless told otherwise
    student = (loaded.recipe.distill is not None or loaded.recipe.gan is not None) and args.sampler is None
    sampler = args.sampler or (s.sampler if student else "fast")
    steps = args.steps or (s.steps if student else None)
    spacing = args.spacing or (s.spacing if student else None)
    out = output_path(args.out, src)
    t0 = time.perf_counter()
    with torch.no_grad():
        y = vocode_mel(loaded.denoiser, model, mel, sampler, steps, args.seed, progress=True, spacing=spacing)[0]
    y = check_finite(y[None], "vocoded waveform", "try another --sampler or checkpoint")[0].numpy()
    seconds = time.perf_counter() - t0
    if y_in is not None:
        y = y[: len(y_in)]
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), y, model.sample_rate, subtype="PCM_16")
    png = out.with_suffix(".png")
    save_spectrograms(png, [("input mel", mel.numpy() if mel.ndim == 2 else mel[0].numpy()),
                            ("mel of vocoded audio", wav_to_mel(y, model).numpy())], model.sample_rate,
                      model.hop_length)
    info = {"wav": str(out), "png": str(png), "seconds_audio": len(y) / model.sample_rate,
            "seconds_synthesis": seconds, "rtf": seconds / (len(y) / model.sample_rate), "sampler": sampler, "steps": steps}
    print(json.dumps(info, indent=2))
    return 0


def cmd_transfer(args) -> int:
    from .timbre import transfer
    loaded = args.load(args.checkpoint, task="timbre", command="diffsuite transfer")
    voc = args.load(args.vocoder, task="audio", command="diffsuite transfer --vocoder") if args.vocoder else None
    if Path(args.out).resolve() == Path(args.wav).resolve():
        raise ConfigError(f"--out {args.out}: it would write over the input; choose another file")
    info = transfer(loaded, args.wav, args.out, voc, args.steps, args.seed, args.overlap, args.target)
    print(json.dumps(info, indent=2))
    return 0
