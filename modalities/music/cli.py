"""`diffsuite compose`: generate, infill, continue or harmonise piano rolls with a trained music checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffsuite.core.config import ConfigError, positive_int
from diffsuite.core.utils import atomic_write_json

from . import chords, control
from .roll import from_model, load_midi


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("compose", help="music: generate / infill / continue / harmonise MIDI")
    p.add_argument("checkpoint")
    p.add_argument("--n", type=positive_int, default=4)
    p.add_argument("--out", required=True)
    p.add_argument("--chords", help='chord symbols, e.g. "C G Am F" (spread evenly over the window)')
    p.add_argument("--beats-per-chord", type=positive_int, default=None)
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: recipe's)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--infill", metavar="IN.mid", help="regenerate --bars of this piece's first window")
    g.add_argument("--continue", dest="cont", metavar="IN.mid", help="append --bars bars to this piece")
    g.add_argument("--melody", metavar="IN.mid", help="keep its highest voice, generate the accompaniment")
    g.add_argument("--accompaniment", metavar="IN.mid", help="keep all but its highest voice, generate a melody")
    p.add_argument("--bars", default=None, help="infill: 1-based range like 3-4; continue: number of bars")
    p.add_argument("--pickup", type=float, default=0.0, help="pickup length of the input MIDI, in beats")
    p.add_argument("--sampler", default=None)
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--eta", type=float, default=None, help="DDIM / RePaint eta (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repaint", action="store_true", help="RePaint resampling for infill / melody tasks")
    p.set_defaults(func=cmd_compose)


def parse_bars(text: str, n_bars: int | None = None) -> range:
    """'3-4' -> range(2, 4) (0-based bar indices); '3' -> range(2, 3); bars past the window's n_bars are an error."""
    try:
        a, _, b = text.partition("-")
        lo, hi = int(a), int(b or a)
    except ValueError:
        raise ConfigError(f"--bars {text!r}: expected a 1-based bar range like 3-4") from None
    if lo < 1 or hi < lo:
        raise ConfigError(f"--bars {text!r}: expected 1 <= first <= last")
    if n_bars is not None and hi > n_bars:
        raise ConfigError(f"--bars {text}: the model's window has {n_bars} bars (1-{n_bars}); choose bars within it")
    return range(lo - 1, hi)


def parse_count(text: str | None, default: int) -> int:
    """--bars for --continue: a number of bars >= 1."""
    if text is None:
        return default
    try:
        n = int(text)
    except ValueError:
        raise ConfigError(f"--bars {text!r}: with --continue, expected a number of bars, e.g. 4") from None
    if n < 1:
        raise ConfigError(f"--bars {n}: expected at least 1 bar")
    return n


def _input_roll(path, data, pickup, length=None):
    if not Path(path).is_file():
        raise ConfigError(f"input MIDI file not found: {path}")
    try:
        piece = load_midi(path, data.steps_per_beat, pickup, data.n_pitch, data.pitch_lo)
    except Exception as e:  # pretty_midi / mido: any unreadable file
        raise ConfigError(f"{path}: cannot read it as MIDI ({type(e).__name__}: {e})") from e
    if piece.n_clipped:
        print(f"warning: {piece.n_clipped} notes of {path} outside MIDI pitches "
              f"[{data.pitch_lo}, {data.pitch_lo + data.n_pitch}) were dropped")
    r = piece.roll
    if length is not None:
        r = np.pad(r, ((0, 0), (0, 0), (0, max(length - r.shape[-1], 0))))[:, :, :length]
    return piece, r


def _cond(args, task, recipe, n, gen):
    if not recipe.model.chord_cond:
        if args.chords:
            raise ConfigError("--chords: this checkpoint was trained without chord conditioning (model.chord_cond=false)")
        return None
    d = recipe.data
    if args.chords:
        try:
            c = chords.parse_progression(args.chords, d.seg_len // d.steps_per_beat, args.beats_per_chord)
        except ValueError as e:
            raise ConfigError(f"--chords {args.chords!r}: {e}") from e
        return torch.from_numpy(c)[None].expand(n, -1, -1).contiguous()
    return task.sample_cond(n, recipe, gen)


def cmd_compose(args) -> int:
    from diffsuite.recipes.run import generate, sampler_options
    if args.bars and not (args.infill or args.cont):
        raise ConfigError("--bars applies to --infill (a bar range) or --continue (a number of bars)")
    if args.beats_per_chord and not args.chords:
        raise ConfigError("--beats-per-chord applies to --chords")
    loaded = args.load(args.checkpoint, task="music", command="diffsuite compose")
    task, recipe, den = loaded.task, loaded.recipe, loaded.denoiser
    d, s = recipe.data, recipe.sample
    gen = torch.Generator().manual_seed(args.seed)
    cond = _cond(args, task, recipe, args.n, gen)
    w = s.guidance if args.guidance is None else args.guidance
    sampler = args.sampler or s.sampler
    opts = sampler_options(s, "repaint" if args.repaint else sampler, args.eta)
    kw = dict(cond=cond, guidance=w, null_cond=task.null_cond, sampler=sampler, steps=args.steps or s.steps,
              generator=gen, **opts)
    spbar = 4 * d.steps_per_beat
    if args.cont:
        piece, prefix = _input_roll(args.cont, d, args.pickup)
        n_bars = parse_count(args.bars, d.seg_len // spbar)
        one = dict(kw, cond=None if cond is None else cond[:1])
        rolls = np.stack([control.continue_piece(den, prefix, n_bars * spbar, d.seg_len, spbar, **one)
                          for _ in range(args.n)])
    elif args.infill or args.melody or args.accompaniment:
        _, r = _input_roll(args.infill or args.melody or args.accompaniment, d, args.pickup, d.seg_len)
        if args.infill:
            mask, known = control.bar_mask(r.shape, parse_bars(args.bars or "2-3", d.seg_len // spbar), spbar), r
        else:
            mask, known = (control.melody_mask if args.melody else control.accompaniment_mask)(r)
        rolls = control.run_inpaint(den, np.repeat(known[None], args.n, 0), np.repeat(mask[None], args.n, 0),
                                    resample=args.repaint, **kw)
    else:
        x, _ = generate(den, task, recipe, n=args.n, sampler=sampler, steps=args.steps, seed=args.seed, guidance=w,
                        eta=args.eta, cond=cond, progress=False)
        rolls = from_model(x)
    from .task import save_rolls
    files = save_rolls(rolls, cond if rolls.shape[-1] == d.seg_len else None, Path(args.out), d)
    atomic_write_json(Path(args.out) / "compose.json", {"checkpoint": str(loaded.checkpoint), "args": {
        k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}, "files": files})
    print(f"wrote {len(rolls)} pieces under {args.out}")
    return 0

