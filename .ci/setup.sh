#!/usr/bin/env bash
# Create the virtual environment and install diffsuite with every extra.
# torch is pinned through constraints.txt so no dependency can pull in another build.
set -euo pipefail
PY=${PY:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip setuptools wheel
$PIP install -q -c constraints.txt "torch==2.13.0"
$PIP install -q -c constraints.txt -e ".[all]"
# The offline General MIDI synthesiser of the timbre corpus: its playback dependency (pyaudio) is not needed.
$PIP install -q -c constraints.txt --no-deps tinysoundfont
# The multi-pitch estimator of benchmarks/timbre.py (essentia's MultiPitchMelodia; a CQT estimator stands in without it).
$PIP install -q -c constraints.txt essentia
# SAC for the locomotion behaviour policies (benchmarks/locomotion/train_sac.py; the tests check its actor export).
$PIP install -q -c constraints.txt stable-baselines3
# Optional reference implementations used by equivalence tests and benchmarks.
# diffwave declares torchaudio (which would pull another torch): install without deps.
$PIP install -q -c constraints.txt --no-deps diffwave==0.1.7 || echo "warning: diffwave reference not installed"
$PIP install -q -c constraints.txt diffusers || echo "warning: diffusers reference not installed"
$PIP install -q -c constraints.txt pesq pystoi || echo "warning: pesq/pystoi not installed"
# The machine listener of benchmarks/audio.py (offline recogniser; its US-English model ships in the wheel).
$PIP install -q -c constraints.txt pocketsphinx || echo "warning: pocketsphinx not installed"
# Guard: exactly the pinned CPU torch, and no CUDA wheels.
"$VENV/bin/python" - <<'PYEOF'
import importlib.metadata as md, sys
v = md.version("torch")
cuda = [d.metadata["Name"] for d in md.distributions() if d.metadata["Name"] and d.metadata["Name"].lower().startswith("nvidia")]
if not v.startswith("2.13.0") or cuda:
    sys.exit(f"setup: wrong torch {v!r} or CUDA wheels {cuda}; constraints.txt must pin torch==2.13.0")
print(f"setup: torch {v} OK")
PYEOF
