"""The README's strip of pictures (docs/figures/{image,audio,music,trajectory}.png), made by the suite's own commands
from trained run folders, then scaled to at most --width pixels:

    python benchmarks/figures.py --image runs/digits --audio runs/vocoder --music runs/bach --trajectory runs/umaze

image: `diffsuite sample` (two digits per class, the recipe's sampler and guidance); audio: `diffsuite vocode` of the
first held-out sentence of the built-in corpus (its log-mel beside the vocoded one); music: `diffsuite compose` with the
chords "C G Am F"; trajectory: `diffsuite plan`, four multi-task episodes (plan and executed path on the maze).
Any of the four can be left out.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "figures"


def diffsuite(*argv) -> None:
    from diffsuite.recipes.cli import main
    rc = main([str(a) for a in argv])
    if rc:
        raise SystemExit(f"diffsuite {' '.join(map(str, argv))}: exit status {rc}")


def image(run: Path, tmp: Path) -> Path:
    from safetensors.torch import load_file
    from diffsuite.modalities.image.task import save_grid
    diffsuite("sample", run, "--n", 20, "--seed", 1, "--out", tmp / "image")
    x = load_file(str(tmp / "image" / "samples.safetensors"))["x"]  # labels 0..9, 0..9: one column per class
    return save_grid(x, tmp / "image" / "strip.png", nrow=10, scale=4)


def audio(run: Path, tmp: Path) -> Path:
    from diffsuite.recipes.run import load
    loaded = load(run)
    wav = loaded.task._files(loaded.recipe.data, "test")[0]
    diffsuite("vocode", run, "--wav", wav, "--out", tmp / "audio" / "vocoded.wav")
    return tmp / "audio" / "vocoded.png"


def music(run: Path, tmp: Path) -> Path:
    diffsuite("compose", run, "--n", 2, "--chords", "C G Am F", "--seed", 1, "--out", tmp / "music")
    return tmp / "music" / "pianoroll.png"


def trajectory(run: Path, tmp: Path) -> Path:
    diffsuite("plan", run, "--episodes", 4, "--multi-task", "--reference-episodes", 2, "--out", tmp / "plan")
    return tmp / "plan" / "plans.png"


def shrink(src: Path, dest: Path, width: int) -> None:
    """Copy src to dest as an RGB PNG at most `width` pixels wide."""
    with Image.open(src) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
        dest.parent.mkdir(parents=True, exist_ok=True)
        im.save(dest, optimize=True)
    print(f"{dest} ({dest.stat().st_size // 1024} KiB)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for m in ("image", "audio", "music", "trajectory"):
        p.add_argument(f"--{m}", type=Path, help=f"a trained {m} run folder")
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    makers = {"image": image, "audio": audio, "music": music, "trajectory": trajectory}
    tmp = Path(tempfile.mkdtemp(prefix="diffsuite-figures-"))
    try:
        for name, make in makers.items():
            run = getattr(a, name)
            if run is not None:
                shrink(make(run, tmp), a.out / f"{name}.png", a.width)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
