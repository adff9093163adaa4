"""Names of the tasks (modalities) a recipe can use, resolved lazily so a missing extra only fails when used."""
from __future__ import annotations

import importlib

TASKS = {
    "toy2d": "diffsuite.recipes.toy2d:Toy2DTask",
    "image": "diffsuite.modalities.image.task:ImageTask",
    "audio": "diffsuite.modalities.audio.task:AudioTask",
    "music": "diffsuite.modalities.music.task:MusicTask",
    "trajectory": "diffsuite.modalities.trajectory.task:TrajectoryTask",
    "timbre": "diffsuite.modalities.audio.timbre:TimbreTask",
}

MODALITY_CLIS = [f"diffsuite.modalities.{m}.cli" for m in ("image", "audio", "music", "trajectory")]


def get_task(name: str):
    """Instantiate the Task registered under `name`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    mod, cls = TASKS[name].split(":")
    try:
        return getattr(importlib.import_module(mod), cls)()
    except ImportError as e:
        raise ImportError(f"task {name!r} needs its extra installed (pip install 'diffsuite[{name}]'): {e}") from e
