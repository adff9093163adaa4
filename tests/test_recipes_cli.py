"""Recipes (typed YAML with overrides) and the `diffsuite` command: clear errors, help, train -> sample."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from diffsuite.core.config import ConfigError, TrainerConfig
from diffsuite.recipes import cli, run

QUICK = ["train.steps=30", "train.progress=false", "train.tensorboard=false", "sample.n=64", "sample.steps=5"]


def test_every_builtin_recipe_loads():
    names = run.list_recipes()
    assert {"toy2d", "image_digits", "music_bach", "audio_vocoder_demo", "trajectory_pointmaze_umaze"} <= set(names)
    for name in names:
        r = run.load_recipe(name)
        assert isinstance(r.train, TrainerConfig) and r.task


def test_overrides_are_typed():
    r = run.load_recipe("toy2d", ["train.steps=7", "train.lr=1e-3", "train.adam_betas=[0.8, 0.9]", "diffusion.T=50"])
    assert r.train.steps == 7 and r.train.lr == 1e-3 and r.diffusion.T == 50
    assert r.train.adam_betas == (0.8, 0.9)
    assert isinstance(run.load_recipe("toy2d", ["train.lr=1"]).train.lr, float)  # int accepted for float


def test_no_is_a_string_not_false(tmp_path):
    """YAML 1.1 reads `no` / `off` as False; the documented `mixed_precision=no` must stay a string, in files too."""
    assert run.load_recipe("toy2d", ["train.mixed_precision=no"]).train.mixed_precision == "no"
    f = tmp_path / "mine.yaml"
    f.write_text("task: toy2d\ntrain: {mixed_precision: no, progress: false, tensorboard: False}\n")
    r = run.load_recipe(str(f))
    assert r.train.mixed_precision == "no" and r.train.progress is False and r.train.tensorboard is False
    with pytest.raises(ConfigError, match=r"train.progress: expected bool, got str 'off'"):
        run.load_recipe("toy2d", ["train.progress=off"])


@pytest.mark.parametrize("override, pattern", [
    ("train.stepz=5", r"train: unknown key\(s\) \['stepz'\]; valid keys: \[.*'steps'"),
    ("model.hiden=3", r"model: unknown key\(s\) \['hiden'\]; valid keys: \['hidden'"),
    ("trian.steps=5", r"unknown section\(s\) \['trian'\]; valid sections"),
    ("train.steps=ten", r"train.steps: expected int, got str 'ten'"),
    ("train.steps=1.5", r"train.steps: expected int, got float"),
    ("train.lr=fast", r"train.lr: expected float, got str"),
    ("diffusion.zero_terminal_snr=3", r"diffusion.zero_terminal_snr: expected bool"),
    ("train=5", r"recipe.*train: expected a mapping"),
    ("nokeyvalue", r"expected key=value"),
])
def test_bad_keys_and_types_are_clear_errors(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        run.load_recipe("toy2d", [override])


def test_errors_in_a_yaml_file_name_the_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("task: toy2d\ntrain: {steps: 10, batchsize: 4}\n")
    with pytest.raises(ConfigError, match=rf"{f}.train: unknown key\(s\) \['batchsize'\].*'batch_size'"):
        run.load_recipe(str(f))
    f.write_text("task: toy2d\ntrain: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{f}: invalid YAML"):
        run.load_recipe(str(f))
    f.write_text("task: nosuchtask\n")
    with pytest.raises(Exception, match="nosuchtask"):
        run.load_recipe(str(f))


def test_missing_recipe_file_lists_builtins(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe file not found: .*nope.yaml \(built-in recipes, by bare name: .*toy2d"):
        run.load_recipe(str(tmp_path / "nope.yaml"))


def test_train_then_sample_and_resume_through_cli(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "toy2d", *QUICK, "--out", str(out)]) == 0
    assert "run folder" in capsys.readouterr().out
    samples = tmp_path / "s"
    rc = cli.main(["sample", str(out), "--sampler", "ddim", "--steps", "8", "--n", "50", "--seed", "1", "--out", str(samples)])
    assert rc == 0
    assert (samples / "samples.png").stat().st_size > 1000
    info = json.loads((samples / "sample.json").read_text())
    assert info["sampler"] == "ddim" and info["steps"] == 8 and info["step"] == 30
    # same seed -> same samples; another seed -> different ones
    from safetensors.torch import load_file
    cli.main(["sample", str(out), "--sampler", "ddim", "--steps", "8", "--n", "50", "--seed", "1", "--out", str(tmp_path / "s2")])
    cli.main(["sample", str(out), "--sampler", "ddim", "--steps", "8", "--n", "50", "--seed", "2", "--out", str(tmp_path / "s3")])
    a, b, c = (load_file(str(tmp_path / d / "samples.safetensors"))["x"] for d in ("s", "s2", "s3"))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # resume the run to more steps
    assert cli.main(["train", "toy2d", *QUICK, "train.steps=40", "--out", str(out), "--resume", "auto"]) == 0
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 40


def test_cli_errors_exit_2_with_message(tmp_path, capsys):
    assert cli.main(["train", "toy2d", "train.stepz=3", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['stepz']" in err and "valid keys" in err
    assert cli.main(["sample", str(tmp_path / "nothing-here")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_list_names_recipes_samplers_schedules(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("toy2d", "dpmpp_2m", "heun", "euler", "ddim", "ddpm", "cosine", "sigmoid", "scaled_linear"):
        assert word in out
    assert "spacings:  leading, trailing, linspace, logsnr, uniform, quadratic, power" in out


@pytest.mark.parametrize("sub", [[], ["train"], ["sample"], ["list"], ["tour"]])
def test_help_for_each_command(sub):
    res = subprocess.run([sys.executable, "-m", "diffsuite.recipes.cli", *sub, "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "usage: diffsuite" in res.stdout
