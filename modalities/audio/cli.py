"""`diffsuite vocode CHECKPOINT --wav IN.wav | --mel MEL.npy`: waveform synthesis with a trained DiffWave vocoder."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def add_commands(subparsers) -> None:
    v = subparsers.add_parser("vocode", help="audio: mel -> waveform with a DiffWave vocoder checkpoint")
    v.add_argument("checkpoint", help="checkpoint folder or run folder")
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--wav", help="analysis-synthesis: audio -> mel -> audio")
    src.add_argument("--mel", help="a .npy mel (n_mels, frames) in the vocoder's convention")
    v.add_argument("--steps", type=int, default=None, help="sampler steps (default: the fast 6-step schedule)")
    v.add_argument("--sampler", default="fast", help="fast (DiffWave Appendix B) | ddpm | ddim | dpmpp_2m | ... "
                   "(ddim --steps 6 is closest to 50-step quality on our models)")
    v.add_argument("--spacing", default=None,
                   help="timestep spacing of a core sampler: leading | trailing | linspace | logsnr | quadratic | power (default: its own)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", default=None, help="output WAV path (default: next to the input, *.vocoded.wav)")
    v.add_argument("--no-ema", action="store_true")
    v.set_defaults(func=cmd_vocode)


def _input_mel(args, model):
    """(mel tensor, input waveform or None, default output path)."""
    import torch
    from .data import load_audio
    from .task import wav_to_mel
    if args.wav:
        y = load_audio(args.wav, model.sample_rate)
        return wav_to_mel(y, model), y, Path(args.wav).with_suffix(".vocoded.wav")
    path = Path(args.mel)
    if not path.is_file():
        raise FileNotFoundError(f"--mel: {path} not found")
    mel = np.load(path, allow_pickle=False)
    return torch.from_numpy(mel.astype(np.float32)), None, path.with_suffix(".vocoded.wav")


def cmd_vocode(args) -> int:
    """Handler of `diffsuite vocode`; a bad input (wrong mel shape or range) is reported with exit code 2."""
    import sys
    try:
        return _vocode(args)
    except ValueError as e:
        print(f"diffsuite vocode: error: {e}", file=sys.stderr)
        return 2


def _vocode(args) -> int:
    import soundfile as sf
    import torch
    from .task import save_spectrograms, vocode_mel, wav_to_mel
    loaded = args.load(args.checkpoint, ema=not args.no_ema)
    model = loaded.recipe.model
    if not model.conditional:
        raise ValueError(f"{args.checkpoint}: an unconditional model cannot vocode (model.conditional=false)")
    mel, y_in, default_out = _input_mel(args, model)
    out = Path(args.out) if args.out else default_out
    t0 = time.perf_counter()
    with torch.no_grad():
        y = vocode_mel(loaded.denoiser, model, mel, args.sampler, args.steps, args.seed, progress=True,
                       spacing=args.spacing)[0].numpy()
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
            "seconds_synthesis": seconds, "rtf": seconds / (len(y) / model.sample_rate), "sampler": args.sampler}
    print(json.dumps(info, indent=2))
    return 0
