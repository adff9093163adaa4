"""Pick the behaviour policies of a train_sac.py run by the level rule (modalities.trajectory.locomotion.select_levels:
expert = the best snapshot, medium = the first at --fraction of its return, replay = the snapshots up to medium) and
copy them, with levels.json and the evaluation curve, into the folder the locomotion datasets read (by default the
committed modalities/trajectory/actors/<env>/).

    python benchmarks/locomotion/export_actors.py runs/sac/hopper [--fraction 0.5] [--replay 5] [--out FOLDER]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main(argv=None) -> int:
    from diffsuite.modalities.trajectory.locomotion import MEDIUM_FRACTION, actor_file, actors_folder, select_levels
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work", help="a train_sac.py run folder (curve.json, snapshots/)")
    ap.add_argument("--fraction", type=float, default=MEDIUM_FRACTION)
    ap.add_argument("--replay", type=int, default=5, help="at most this many replay snapshots, evenly spaced, medium last")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    work = Path(args.work)
    info = json.loads((work / "curve.json").read_text())
    levels = select_levels(info["curve"], args.fraction)
    replay = levels["replay"]
    if len(replay) > args.replay:
        step = (len(replay) - 1) / (args.replay - 1)
        replay = [replay[round(i * step)] for i in range(args.replay)]
    levels["replay"] = replay
    out = actors_folder(info["env"], args.out)
    out.mkdir(parents=True, exist_ok=True)
    for steps in sorted({levels["medium"], levels["expert"], *replay}):
        shutil.copy2(actor_file(work / "snapshots", steps), actor_file(out, steps))
    (out / "levels.json").write_text(json.dumps(levels, indent=1))
    for f in ("curve.json", "curve.png"):
        if (work / f).is_file():
            shutil.copy2(work / f, out / f)
    print(json.dumps(levels, indent=1))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
