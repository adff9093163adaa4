"""Precision chosen for the machine: one rule (`auto`) for training and for every sampling command.

`auto` is bf16 where the hardware computes it natively (a CUDA device that supports bf16; a CPU with
AVX512-BF16 or AMX whose kernels torch uses) and fp32 everywhere else: on a CPU without native bf16,
torch emulates it and a bf16-autocast step can be many times slower than fp32.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Optional

import torch

#: what `train.mixed_precision` and `--precision` accept ("no" and "fp32" are the same: no autocast)
PRECISIONS = ("auto", "no", "fp32", "bf16", "fp16")
#: what the sampling commands accept
SAMPLING_PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Machine:
    """What the precision rule looks at, read once from the hardware (tests build their own)."""

    device: str = "cpu"            # "cpu" | "cuda" | another torch device type
    cpu_capability: str = "DEFAULT"  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...
    cpu_bf16_isa: bool = False     # the CPU has AVX512-BF16 or AMX instructions
    onednn_bf16: bool = False      # oneDNN (mkldnn) will run bf16 kernels on this CPU
    cuda_bf16: bool = False        # the CUDA device supports bf16
    device_name: str = ""


@dataclass(frozen=True)
class Resolved:
    """The precision a run uses and why."""

    requested: str
    precision: str   # "fp32" | "bf16" | "fp16"
    reason: str
    native_bf16: bool

    @property
    def accelerate(self) -> str:
        """Accelerate's `mixed_precision` value for this precision."""
        return "no" if self.precision == "fp32" else self.precision

    @property
    def dtype(self) -> Optional[torch.dtype]:
        """The autocast dtype, or None for fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (empty where unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor()


def _cpu_bf16_isa() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(c()) for c in checks if c is not None)


def _onednn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def default_device_type() -> str:
    """The device type training would use: CUDA when present, unless Accelerate is told to use the CPU."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def probe_machine(device: Optional[str | torch.device] = None) -> Machine:
    """Read the facts the rule needs from this machine."""
    dev = torch.device(device).type if device is not None else default_device_type()
    cuda_bf16 = dev == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    name = torch.cuda.get_device_name() if dev == "cuda" and torch.cuda.is_available() else cpu_name()
    return Machine(device=dev, cpu_capability=torch.backends.cpu.get_cpu_capability(), cpu_bf16_isa=_cpu_bf16_isa(),
                   onednn_bf16=_onednn_bf16(), cuda_bf16=cuda_bf16, device_name=name)


def native_bf16(m: Machine) -> tuple[bool, str]:
    """Whether device m computes bf16 natively, and a one-line reason."""
    if m.device == "cuda":
        return m.cuda_bf16, f"CUDA device {m.device_name or ''} {'supports' if m.cuda_bf16 else 'has no'} bf16".replace("  ", " ")
    if m.device != "cpu":
        return False, f"device {m.device}: bf16 autocast is not known to be native there"
    if not m.cpu_bf16_isa:
        return False, f"CPU capability {m.cpu_capability}: no native bf16 (no AVX512-BF16 or AMX)"
    if m.cpu_capability in ("DEFAULT", "AVX2", "NO AVX", "ZVECTOR", "VSX") or not m.onednn_bf16:
        return False, (f"CPU has AVX512-BF16/AMX but torch runs {m.cpu_capability} kernels"
                       f"{'' if m.onednn_bf16 else ' and oneDNN has no bf16'}: bf16 would be emulated")
    return True, f"CPU capability {m.cpu_capability} with AVX512-BF16/AMX: native bf16"


def resolve_precision(requested: str, machine: Optional[Machine] = None) -> Resolved:
    """The rule: `auto` is bf16 on native-bf16 hardware, fp32 elsewhere; an explicit choice is kept as given."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: valid values are {list(PRECISIONS)}")
    m = machine or probe_machine()
    native, why = native_bf16(m)
    if requested == "auto":
        p = "bf16" if native else "fp32"
        return Resolved(requested, p, f"{why}, using {p}", native)
    p = "fp32" if requested == "no" else requested
    return Resolved(requested, p, f"{p} as requested ({why})", native)


def bf16_slowdown(repeats: int = 3) -> float:
    """A short probe (a fraction of a second): time of one Conv1d forward + backward under bf16 autocast over fp32."""
    conv = torch.nn.Conv1d(32, 64, 3, padding=1)
    x = torch.randn(4, 32, 1024)

    def run(dtype) -> float:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                y = conv(x)
            y.float().square().mean().backward()
            best = min(best, time.perf_counter() - t0)
        return best

    run(None), run(torch.bfloat16)  # warm-up (first calls pick and build kernels)
    return run(torch.bfloat16) / max(run(None), 1e-9)


def warn_if_emulated(r: Resolved, machine: Machine) -> None:
    """An explicit bf16 on a CPU without native bf16 still runs, with a warning giving the measured slowdown."""
    if r.precision == "bf16" and machine.device == "cpu" and not r.native_bf16:
        ratio = bf16_slowdown()
        warnings.warn(f"bf16 on this CPU is emulated ({native_bf16(machine)[1]}): a probe step (Conv1d forward + "
                      f"backward) took {ratio:.1f}x the time of fp32; precision 'auto' (or 'no') uses fp32 here", stacklevel=2)


def announce(r: Resolved, machine: Machine, stream=None) -> None:
    """Warn where bf16 is emulated and print the choice and its reason (to `stream`, default stderr, so a command's
    own output on stdout stays clean)."""
    warn_if_emulated(r, machine)
    print(f"precision: {r.precision} ({r.reason})", file=stream or sys.stderr, flush=True)


def choose(requested: str, device: Optional[str | torch.device] = None, quiet: bool = False) -> Resolved:
    """Resolve `requested` on this machine and announce it (unless quiet)."""
    m = probe_machine(device)
    r = resolve_precision(requested, m)
    if not quiet:
        announce(r, m)
    return r


def autocast(device_type: str, dtype: Optional[torch.dtype]):
    """A torch.autocast context for dtype, or a no-op for fp32 (None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)
