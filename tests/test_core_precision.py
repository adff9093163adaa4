"""Precision chosen for the machine: the `auto` rule with each capability faked, the emulated-bf16 warning, the
trainer and the sampling commands following the rule, and `diffsuite info`."""
from __future__ import annotations

import json

import pytest
import torch

from diffsuite.core import precision
from diffsuite.core.precision import Machine, resolve_precision
from diffsuite.recipes import cli

AVX2 = Machine(device="cpu", cpu_capability="AVX2", cpu_bf16_isa=False, onednn_bf16=False)
AVX512_NO_BF16 = Machine(device="cpu", cpu_capability="AVX512", cpu_bf16_isa=False, onednn_bf16=True)
SAPPHIRE = Machine(device="cpu", cpu_capability="AVX512", cpu_bf16_isa=True, onednn_bf16=True)
CAPPED = Machine(device="cpu", cpu_capability="AVX2", cpu_bf16_isa=True, onednn_bf16=False)  # ATEN_CPU_CAPABILITY=avx2
A100 = Machine(device="cuda", cuda_bf16=True, device_name="A100")
V100 = Machine(device="cuda", cuda_bf16=False, device_name="V100")


@pytest.mark.parametrize("machine, expected, reason", [
    (AVX2, "fp32", "CPU capability AVX2: no native bf16"),
    (AVX512_NO_BF16, "fp32", "CPU capability AVX512: no native bf16"),
    (SAPPHIRE, "bf16", "native bf16"),
    (CAPPED, "fp32", "torch runs AVX2 kernels"),
    (A100, "bf16", "supports bf16"),
    (V100, "fp32", "has no bf16"),
])
def test_auto_rule(machine, expected, reason):
    r = resolve_precision("auto", machine)
    assert r.precision == expected and reason in r.reason and r.reason.endswith(f"using {expected}")
    assert r.accelerate == ("no" if expected == "fp32" else "bf16")


@pytest.mark.parametrize("requested, expected", [("no", "fp32"), ("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_explicit_choice_is_kept(requested, expected):
    for m in (AVX2, SAPPHIRE, A100):
        assert resolve_precision(requested, m).precision == expected


def test_unknown_precision_is_an_error():
    with pytest.raises(ValueError, match=r"precision 'bf17': valid values are \['auto', 'no', 'fp32', 'bf16', 'fp16'\]"):
        resolve_precision("bf17", AVX2)


def test_explicit_bf16_on_emulating_cpu_warns_with_measured_slowdown(monkeypatch):
    monkeypatch.setattr(precision, "probe_machine", lambda device=None: AVX2)
    with pytest.warns(UserWarning, match=r"bf16 on this CPU is emulated \(CPU capability AVX2.*took \d+\.\dx the time"):
        r = precision.choose("bf16")
    assert r.precision == "bf16"
    monkeypatch.setattr(precision, "probe_machine", lambda device=None: SAPPHIRE)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.choose("bf16")  # native: no warning
        precision.choose("auto")


def test_probe_reads_this_machine():
    m = precision.probe_machine("cpu")
    assert m.device == "cpu" and m.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert 0 < precision.bf16_slowdown(repeats=1) < 1000


def _toy_run(tmp_path, *overrides):
    out = tmp_path / "run"
    assert cli.main(["train", "toy2d", "train.steps=3", "train.progress=false", "train.tensorboard=false",
                     "sample.n=8", "sample.steps=3", *overrides, "--out", str(out)]) == 0
    return out


def test_training_follows_the_rule_and_records_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision, "probe_machine", lambda device=None: AVX2)
    out = _toy_run(tmp_path)
    err = capsys.readouterr().err
    assert "precision: fp32 (CPU capability AVX2: no native bf16 (no AVX512-BF16 or AMX), using fp32)" in err
    start = json.loads((out / "run.json").read_text())["starts"][0]
    assert start["precision"]["requested"] == "auto" and start["precision"]["precision"] == "fp32"
    assert start["machine"]["cpu_capability"] == "AVX2" and start["step"] == 0


def test_training_uses_bf16_where_native(tmp_path, monkeypatch):
    from diffsuite.core.trainer import Trainer
    seen = {}
    init = Trainer.__init__

    def spy(self, *a, **k):
        init(self, *a, **k)
        seen["mp"] = self.acc.mixed_precision
    monkeypatch.setattr(Trainer, "__init__", spy)
    monkeypatch.setattr(precision, "probe_machine", lambda device=None: SAPPHIRE)
    _toy_run(tmp_path)
    assert seen["mp"] == "bf16"


def test_sampling_commands_take_precision(tmp_path, capsys):
    out = _toy_run(tmp_path, "train.mixed_precision=no")
    parser = cli.build_parser()
    for cmd in ("sample", "vocode", "compose", "plan", "eval", "image-inpaint", "image-path"):
        action = [a for a in parser._subparsers._group_actions[0].choices[cmd]._actions if a.dest == "precision"]
        assert action and action[0].choices == ("auto", "fp32", "bf16") and action[0].default == "auto", cmd
    xs = {}
    for p in ("fp32", "bf16"):
        assert cli.main(["sample", str(out), "--precision", p, "--n", "16", "--steps", "4", "--out", str(tmp_path / p)]) == 0
        info = json.loads((tmp_path / p / "sample.json").read_text())
        assert info["precision"]["precision"] == p
        from safetensors.torch import load_file
        xs[p] = load_file(str(tmp_path / p / "samples.safetensors"))["x"]
    assert xs["fp32"].dtype == xs["bf16"].dtype == torch.float32
    diff = (xs["fp32"] - xs["bf16"]).abs().max().item()
    assert 0 < diff < 0.5  # bf16 changed the network's arithmetic, not the result's meaning
    with pytest.raises(SystemExit):
        cli.main(["sample", str(out), "--precision", "fp16"])


def test_info_runs(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    for part in ("torch 2.", "capability", "precision auto ->", "cache:", "audio:", "references:"):
        assert part in text
    assert cli.main(["info", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["precision_auto"]["precision"] in ("fp32", "bf16")
    assert facts["device"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert facts["packages"]["audio"]["soundfile"]["imports"] is True


def test_builtin_recipes_use_auto_unless_they_say_why():
    from diffsuite.recipes import run
    for name in run.list_recipes():
        r = run.load_recipe(name)
        if r.train.mixed_precision != "auto":
            text = run.find_recipe(name).read_text()
            assert "not auto" in text and "precision_" in text, f"{name}: mixed_precision {r.train.mixed_precision!r} " \
                "without a comment saying why not auto and which measurement shows it"


def test_precision_benchmark_runs(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import precision as bench
    out = tmp_path / "p.json"
    assert bench.main(["--recipes", "toy2d", "--steps", "1", "--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["recipe"] == "toy2d" and rows[0]["fp32_steps_per_s"] > 0 and rows[0]["bf16_steps_per_s"] > 0
