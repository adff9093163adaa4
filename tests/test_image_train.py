"""Image end to end: train a few steps through the core trainer, reload the checkpoint, sample reproducibly."""
import json

import pytest
import torch

from diffsuite.recipes import run

torch.set_num_threads(1)


def _recipe(T=50):
    return {"task": "image", "name": "image_test",
            "model": {"preset": "tiny", "num_classes": 10, "model_channels": 8, "num_heads": 1},
            "data": {"source": "digits", "image_size": 16, "channels": 1},
            "diffusion": {"schedule": "cosine", "T": T, "cond_drop_prob": 0.2},
            "train": {"steps": 3, "batch_size": 8, "lr": 1e-3, "log_every": 1, "progress": False,
                      "tensorboard": False},
            "sample": {"sampler": "ddim", "steps": 4, "n": 10, "guidance": 2.0, "seed": 0}}


def test_checkpoint_reloads_and_samples_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    run_dir = run.train(_recipe(), out_dir=tmp_path / "run")
    a, b = run.load(run_dir), run.load(run_dir)
    xa, ca = run.generate(a.denoiser, a.task, a.recipe, seed=3, progress=False)
    xb, cb = run.generate(b.denoiser, b.task, b.recipe, seed=3, progress=False)
    assert torch.equal(xa, xb) and torch.equal(ca, cb) and xa.shape == (10, 1, 16, 16)
    xc, _ = run.generate(a.denoiser, a.task, a.recipe, seed=4, progress=False)
    assert not torch.equal(xa, xc)
    files = a.task.save_samples(xa, ca, tmp_path / "s", a.recipe)
    assert json.loads(open(files["json"]).read())["labels"][:3] == [0, 1, 2]
    # the image commands' sampler takes the recipe's sampler options as run.generate does (here lambda_min)
    from dataclasses import replace
    from diffsuite.modalities.image.cli import sample_images
    r = replace(a.recipe, sample=replace(a.recipe.sample, sampler="dpmpp_2m", lambda_min=-3.0))
    xi, _ = sample_images(a.denoiser, a.task, r, 10, seed=3)
    assert torch.equal(xi, run.generate(a.denoiser, a.task, r, seed=3, progress=False)[0])
    r0 = replace(r, sample=replace(r.sample, lambda_min=None))
    assert not torch.equal(xi, sample_images(a.denoiser, a.task, r0, 10, seed=3)[0])


@pytest.mark.slow
def test_eval_and_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    from diffsuite.recipes.cli import main
    run_dir = run.train(_recipe(T=20), out_dir=tmp_path / "run")
    assert main(["eval", str(run_dir), "--n", "40", "--bpd-n", "4", "--out", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert 0 <= res["conditional_accuracy"] <= 1 and res["digits_fid"] > 0 and res["bits_per_dim"] > 0
    assert res["classifier_test_accuracy"] > 0.9
    assert main(["image-inpaint", str(run_dir), "--n", "3", "--mask", "left-half", "--out", str(tmp_path / "i")]) == 0
    assert main(["image-path", str(run_dir), "--label", "3", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "i" / "inpaint.png").exists() and (tmp_path / "p" / "denoising_path.png").exists()


# `diffsuite sample CHECKPOINT --inpaint/--mask [--repaint]`: the image task's inpainting through the generic command

@pytest.fixture(scope="module")
def quick_image_run(tmp_path_factory):
    """A tiny image checkpoint (3 steps) and its dataset cache, trained once for the inpainting CLI tests."""
    root = tmp_path_factory.mktemp("image_cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFSUITE_CACHE", str(root / "cache"))
        run_dir = run.train(_recipe(T=20), out_dir=root / "run")
    return run_dir, root / "cache"


def _grid_cells(png, n, rows=3, size=16, pad=1, scale=4):
    """The cells of a save_grid PNG (rows x n images of size x size, scaled): uint8 (rows, n, size, size)."""
    import numpy as np
    from PIL import Image
    a = np.asarray(Image.open(png))[::scale, ::scale]
    return np.stack([np.stack([a[pad + r * (size + pad):pad + r * (size + pad) + size,
                                 pad + c * (size + pad):pad + c * (size + pad) + size] for c in range(n)])
                     for r in range(rows)])


@pytest.mark.parametrize("mask_kind", ["left-half", "file"])
@pytest.mark.parametrize("repaint", [False, True])
def test_sample_inpaint_keeps_known_pixels(quick_image_run, tmp_path, monkeypatch, mask_kind, repaint):
    import numpy as np
    from PIL import Image
    from diffsuite.recipes.cli import main
    run_dir, cache = quick_image_run
    monkeypatch.setenv("DIFFSUITE_CACHE", str(cache))
    img = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "in.png")
    mask = "left-half"
    if mask_kind == "file":  # the same mask as an image: white = keep
        m = np.zeros((16, 16), np.uint8)
        m[:, :8] = 255
        Image.fromarray(m).save(tmp_path / "mask.png")
        mask = str(tmp_path / "mask.png")
    out = tmp_path / "out"
    argv = ["sample", str(run_dir), "--inpaint", str(tmp_path / "in.png"), "--mask", mask, "--n", "3",
            "--steps", "4", "--seed", "1", "--out", str(out)] + (["--repaint"] if repaint else [])
    assert main(argv) == 0
    assert (out / "inpaint.png").exists()
    info = json.loads((out / "inpaint.json").read_text())
    assert info["repaint"] is repaint and info["n"] == 3 and info["mask"] == mask
    original, _, filled = _grid_cells(out / "inpaint.png", 3)
    assert (original == img).all()  # the input image, row 1
    assert (filled[..., :8] == img[:, :8]).all()  # known pixels kept exactly
    assert not (filled[..., 8:] == img[:, 8:]).all()  # the masked half is filled with something else


def test_sample_inpaint_matches_image_inpaint_on_test_images(quick_image_run, tmp_path, monkeypatch):
    from diffsuite.recipes.cli import main
    run_dir, cache = quick_image_run
    monkeypatch.setenv("DIFFSUITE_CACHE", str(cache))
    common = ["--mask", "centre-box", "--n", "2", "--steps", "4", "--seed", "2"]
    assert main(["sample", str(run_dir), *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["image-inpaint", str(run_dir), *common, "--out", str(tmp_path / "b")]) == 0
    a, b = ((tmp_path / d / "inpaint.png").read_bytes() for d in "ab")
    assert a == b  # one implementation behind both commands
    info = json.loads((tmp_path / "a" / "inpaint.json").read_text())
    assert info["image"] is None and len(info["labels"]) == 2  # held-out test digits with their labels
    original, _, filled = _grid_cells(tmp_path / "a" / "inpaint.png", 2)
    keep = torch.ones(16, 16, dtype=torch.bool)
    keep[4:12, 4:12] = False
    assert (filled[:, keep.numpy()] == original[:, keep.numpy()]).all()


def test_sample_inpaint_errors_exit_2(quick_image_run, tmp_path, monkeypatch, capsys):
    from diffsuite.recipes.cli import main
    run_dir, cache = quick_image_run
    monkeypatch.setenv("DIFFSUITE_CACHE", str(cache))
    assert main(["sample", str(run_dir), "--mask", "left-haf", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--mask: 'left-haf' is neither a preset mask" in err and "centre-box" in err
    assert main(["sample", str(run_dir), "--inpaint", str(tmp_path / "none.png"), "--out", str(tmp_path / "x")]) == 2
    assert "image file not found" in capsys.readouterr().err
    assert main(["sample", str(run_dir), "--repaint", "--out", str(tmp_path / "x")]) == 2
    assert "--repaint needs --inpaint" in capsys.readouterr().err


def test_sample_inpaint_on_a_task_without_inpainting_exits_2(tmp_path, capsys):
    from diffsuite.recipes.cli import main
    out = tmp_path / "toy"
    assert main(["train", "toy2d", "train.steps=2", "train.progress=false", "train.tensorboard=false",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--inpaint", str(tmp_path / "x.png"), "--mask", "left-half",
                 "--out", str(tmp_path / "s")]) == 2
    assert "task 'toy2d' does not support inpainting" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


# classifier guidance: a noise-aware classifier run (a recipe with a classifier section) guides `diffsuite sample`

def _classifier_recipe(T=20, **diffusion):
    r = _recipe(T)
    r.update(name="image_classifier_test", classifier={"pool": "attention"})
    r["diffusion"] = {"schedule": "cosine", "T": T, **diffusion}
    r.pop("sample")
    return r


def test_classifier_guided_sampling_end_to_end(quick_image_run, tmp_path, monkeypatch, capsys):
    from diffsuite.recipes.cli import main
    run_dir, cache = quick_image_run
    monkeypatch.setenv("DIFFSUITE_CACHE", str(cache))
    clf_dir = run.train(_classifier_recipe(), out_dir=tmp_path / "clf")
    clf = run.load_classifier(clf_dir)
    assert clf(torch.zeros(2, 1, 16, 16), torch.tensor([0.0, 19.0])).shape == (2, 10)
    a = run.load(run_dir)
    x0, c0 = run.generate(a.denoiser, a.task, a.recipe, guidance=0.0, seed=1, progress=False)
    x1, c1 = run.generate(a.denoiser, a.task, a.recipe, guidance=0.0, seed=1, progress=False, classifier=clf,
                          classifier_scale=0.0)
    assert torch.equal(x0, x1) and torch.equal(c0, c1)  # s = 0 is the unguided model
    x2, _ = run.generate(a.denoiser, a.task, a.recipe, guidance=0.0, seed=1, progress=False, classifier=clf,
                         classifier_scale=5.0)
    assert not torch.equal(x0, x2) and torch.isfinite(x2).all()
    out = tmp_path / "s"
    assert main(["sample", str(run_dir), "--classifier", str(clf_dir), "--classifier-scale", "2", "--unconditional",
                 "--guidance", "0", "--n", "4", "--out", str(out)]) == 0
    info = json.loads((out / "sample.json").read_text())
    assert info["classifier_scale"] == 2.0 and info["unconditional"] and (out / "samples.png").exists()
    # mistakes get one line each
    capsys.readouterr()
    assert main(["sample", str(clf_dir), "--out", str(tmp_path / "x")]) == 2
    assert "is a noise-aware classifier, not a diffusion model" in capsys.readouterr().err
    assert main(["sample", str(run_dir), "--classifier", str(run_dir), "--out", str(tmp_path / "x")]) == 2
    assert "not a noise-aware classifier" in capsys.readouterr().err
    assert main(["sample", str(run_dir), "--unconditional", "--out", str(tmp_path / "x")]) == 2
    assert "--unconditional needs --classifier" in capsys.readouterr().err
    assert main(["sample", str(run_dir), "--classifier", str(clf_dir), "--unconditional", "--guidance", "2",
                 "--out", str(tmp_path / "x")]) == 2
    assert "no --guidance" in capsys.readouterr().err
    other = run.train(_classifier_recipe(T=30), out_dir=tmp_path / "clf30")
    assert main(["sample", str(run_dir), "--classifier", str(other), "--out", str(tmp_path / "x")]) == 2
    assert "another noise schedule" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_classifier_recipe_that_drops_labels_is_refused(tmp_path, monkeypatch):
    from diffsuite.core.config import ConfigError
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="cond_drop_prob=0"):
        run.train(_classifier_recipe(cond_drop_prob=0.1), out_dir=tmp_path / "c")
    r = _classifier_recipe()
    r["data"]["class_cond"] = False
    r["model"].pop("num_classes")
    with pytest.raises(ConfigError, match="labelled data"):
        run.train(r, out_dir=tmp_path / "c2")
    assert not (tmp_path / "c").exists() and not (tmp_path / "c2").exists()


# image-to-image: SR3 on digits through the generic trainer and commands, and `diffsuite upscale`

def _sr_recipe(**data):
    r = _recipe(T=20)
    r.update(name="image_sr_test")
    r["model"].pop("num_classes")
    r["data"].update(class_cond=False, degradation="sr", factor=4, **data)
    r["diffusion"].pop("cond_drop_prob")
    r["sample"].pop("guidance")
    return r


def test_sr3_trains_samples_and_upscales_any_size(tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image
    from diffsuite.recipes.cli import main
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    run_dir = run.train(_sr_recipe(), out_dir=tmp_path / "sr")
    a = run.load(run_dir)
    assert a.recipe.model.source_channels == 1
    x, cond = run.generate(a.denoiser, a.task, a.recipe, n=3, progress=False)
    test = a.task.build_dataset(a.recipe.data, "test")
    want = torch.stack([test[i]["cond"]["source"] for i in range(3)])  # the first held-out digits, degraded
    assert torch.equal(cond["source"], want)
    files = a.task.save_samples(x, cond, tmp_path / "s", a.recipe)
    assert Image.open(files["grid"]).size[1] < Image.open(files["grid"]).size[0]  # sources above samples
    img = tmp_path / "low.png"
    Image.fromarray((np.arange(5 * 7).reshape(5, 7) * 7).astype(np.uint8)).save(img)
    out = tmp_path / "up" / "big.png"
    assert main(["upscale", str(run_dir), "--image", str(img), "--out", str(out), "--samples", "2", "--steps", "3"]) == 0
    assert Image.open(out).size == (28, 20) and (tmp_path / "up" / "big-1.png").exists()
    assert Image.open(tmp_path / "up" / "big-mean.png").size == (28, 20)
    assert json.loads(out.with_suffix(".json").read_text())["overlap"] == 4
    from diffsuite.core.degrade import consistency_error  # each output, as written, downsamples to the input
    from diffsuite.modalities.image import edit
    low = edit.read_full(str(img), 1)
    assert float(consistency_error(edit.read_full(str(out), 1), low, 4)) < 0.01  # (8-bit rounding)
    raw = tmp_path / "raw" / "big.png"
    assert main(["upscale", str(run_dir), "--image", str(img), "--out", str(raw), "--steps", "3", "--no-project"]) == 0
    assert float(consistency_error(edit.read_full(str(raw), 1), low, 4)) > 0.05
    # mistakes: one line each, nothing written
    capsys.readouterr()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "dot.png")
    assert main(["upscale", str(run_dir), "--image", str(tmp_path / "dot.png"), "--out", str(tmp_path / "x.png")]) == 2
    assert "too small to upscale" in capsys.readouterr().err
    assert main(["upscale", str(run_dir), "--image", str(tmp_path / "none.png"), "--out", str(tmp_path / "x.png")]) == 2
    assert "image file not found" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_upscale_refuses_a_model_that_is_not_sr(quick_image_run, tmp_path, monkeypatch, capsys):
    from diffsuite.recipes.cli import main
    run_dir, cache = quick_image_run
    monkeypatch.setenv("DIFFSUITE_CACHE", str(cache))
    assert main(["upscale", str(run_dir), "--image", "x.png", "--out", str(tmp_path / "x.png")]) == 2
    assert "needs a super-resolution (SR3) checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"model": {"source_channels": 3}}, "model.source_channels=3 but data.degradation=sr gives 1"),
    ({"model": {"image_size": 18}, "data": {"image_size": 18}}, "multiples of 4, got 18x18"),
    ({"data": {"degradation": "colorize"}}, "set data.channels=3"),
])
def test_img2img_recipe_mistakes_are_config_errors(tmp_path, monkeypatch, change, message):
    from diffsuite.core.config import ConfigError
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    r = _sr_recipe()
    for sec, kv in change.items():
        r[sec].update(kv)
    with pytest.raises(ConfigError, match=message):
        run.train(r, out_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def _palette_recipe(degradation, **data):
    r = _sr_recipe()
    r.update(name=f"image_{degradation}_test")
    r["data"].pop("factor")
    r["data"].update(degradation=degradation, **data)
    return r


def test_palette_inpaint_and_uncrop_restore_any_image_keeping_known_pixels(tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image
    from diffsuite.recipes.cli import main
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    img = tmp_path / "in.png"
    pixels = (np.arange(20 * 26).reshape(20, 26) % 251).astype(np.uint8)
    Image.fromarray(pixels).save(img)
    inp = run.train(_palette_recipe("inpaint", mask="mixed"), out_dir=tmp_path / "inp")
    assert run.load(inp).recipe.model.source_channels == 2
    out = tmp_path / "o" / "filled.png"
    assert main(["restore", str(inp), "--task", "inpaint", "--image", str(img), "--mask", "left-half", "--out", str(out),
                 "--steps", "3"]) == 0
    got = np.asarray(Image.open(out))
    assert got.shape == (20, 26) and np.array_equal(got[:, :13], pixels[:, :13])  # the known half, exactly
    unc = run.train(_palette_recipe("uncrop", border=0.25), out_dir=tmp_path / "unc")
    out2 = tmp_path / "o" / "wider.png"
    assert main(["restore", str(unc), "--task", "uncrop", "--image", str(img), "--out", str(out2), "--steps", "3"]) == 0
    got = np.asarray(Image.open(out2))
    assert got.shape == (20, 26 + 9) and np.array_equal(got[:, :26], pixels)  # 26 * 0.25 / 0.75 -> 9 new columns
    capsys.readouterr()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "m.png")
    assert main(["restore", str(inp), "--task", "inpaint", "--image", str(img), "--mask", str(tmp_path / "m.png"),
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "5x5 pixels but the image is 26x20" in capsys.readouterr().err
    assert main(["restore", str(inp), "--task", "colorize", "--image", str(img), "--out", str(tmp_path / "x.png")]) == 2
    assert "needs a colorization checkpoint (data.degradation=colorize)" in capsys.readouterr().err
    assert main(["restore", str(unc), "--task", "uncrop", "--image", str(img), "--mask", "left-half",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "--mask is for --task inpaint" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_photo_patches_split_by_photograph_and_colorize(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image
    from diffsuite.modalities.image import data as D
    from diffsuite.recipes.cli import main
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    names = [set(v) for v in D.PHOTO_SPLITS.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    train, test = D.photos("train", 32, 3), D.photos("test", 32, 3)
    torch.manual_seed(0)
    a = train[0]
    torch.manual_seed(1)
    assert a.shape == (3, 32, 32) and not torch.equal(a, train[0])  # a random crop per draw
    assert test.x.shape[1:] == (3, 32, 32) and len(test) == len(D.photos("test", 32, 3))  # a fixed grid
    r = _palette_recipe("colorize")
    r["model"].update(image_size=32, in_channels=3)
    r["data"].update(source="photos", image_size=32, channels=3)
    run_dir = run.train(r, out_dir=tmp_path / "col")
    gray = tmp_path / "gray.png"
    Image.fromarray((np.arange(40 * 50).reshape(40, 50) % 256).astype(np.uint8)).save(gray)
    out = tmp_path / "c.png"
    assert main(["restore", str(run_dir), "--task", "colorize", "--image", str(gray), "--out", str(out),
                 "--steps", "2", "--samples", "2"]) == 0
    assert np.asarray(Image.open(out)).shape == (40, 50, 3) and (tmp_path / "c-mean.png").exists()


def test_sr3_with_continuous_noise_levels_trains_and_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    r = _sr_recipe()
    r["diffusion"].update(continuous_t=True, time_input="noise_level")
    a = run.load(run.train(r, out_dir=tmp_path / "sr"))
    assert a.denoiser.time_input == "noise_level"
    x, _ = run.generate(a.denoiser, a.task, a.recipe, n=2, progress=False)
    assert torch.isfinite(x).all()


def test_a_folder_of_photographs_as_patches(tmp_path, monkeypatch):
    """data.patches: one's own photographs cut into random patches, split by file name like the bundled photos."""
    import numpy as np
    from PIL import Image
    from diffsuite.core.utils import split_of
    from diffsuite.recipes.registry import get_task
    from diffsuite.recipes.run import load_recipe
    folder = tmp_path / "mine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"p{i}.png" for i in range(40)]
    for n in names:
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / n)
    (folder / "broken.png").write_bytes(b"not an image")
    r = load_recipe("image_photos_sr3", ["data.source=folder", f"data.path={folder}", "data.patches=true",
                                         "data.image_size=32", "model.image_size=32"])
    task = get_task("image")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        train = task.build_dataset(r.data, "train")
    assert train[0]["x0"].shape == (3, 32, 32) and train[0]["cond"]["source"].shape == (3, 32, 32)
    assert split_of("broken.png") == "train"  # (so the training split is where the warning comes from)
    test = task.build_dataset(r.data, "test")
    assert len(test) == sum(split_of(n) == "test" for n in names) >= 1  # one 32x32 tile per 40x50 photograph


def test_scale_augmentation_draws_crops_from_larger_levels_of_each_photograph(tmp_path):
    """data.scale_aug: the training crops come from the photograph at short_side, at sqrt(2) steps above it and at its
    own size; val / test keep the fixed grid of the short_side photograph."""
    import numpy as np
    from PIL import Image
    from diffsuite.modalities.image import data as D
    folder = tmp_path / "mine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"p{i}.png" for i in range(30)]
    for n in names:  # 100 x 150: short sides 40 (the base), 57 (40 sqrt 2), 80, 100 (its own)
        Image.fromarray(rng.integers(0, 255, (100, 150, 3), dtype=np.uint8)).save(folder / n)
    train = D.folder_patches(folder, "train", 32, 3, short_side=40, scale_aug=True)
    assert [tuple(q.shape[1:]) for q in train.levels[0]] == [(40, 60), (57, 85), (80, 120), (100, 150)]
    assert torch.equal(train.levels[0][0], train.photos[0]) and len(train) == len(train.photos)  # one 32-cell each
    first = next(n for n in sorted(names) if D.split_of(n) == "train")
    assert torch.equal(train.levels[0][-1], D.to_model(np.asarray(Image.open(folder / first))[None])[0])  # its own size
    seen = set()
    for seed in range(40):  # each crop is a window of one level, and every level is drawn
        torch.manual_seed(seed)
        x = train[0]
        seen.update(k for k, q in enumerate(train.levels[0]) if _is_crop_of(x, q))
    assert seen == {0, 1, 2, 3}
    plain = D.folder_patches(folder, "train", 32, 3, short_side=40)
    assert plain.levels is None
    test = D.folder_patches(folder, "test", 32, 3, short_side=40, scale_aug=True)
    assert len(test) == sum(D.split_of(n) == "test" for n in names)  # the grid of the 40-pixel photographs only


def test_gray_train_adds_the_grayscale_photographs_to_rgb_training_only():
    """data.gray_train: RGB training also crops the grayscale photographs (as gray RGB); val / test stay colour."""
    from diffsuite.modalities.image import data as D
    colour, both = D.photos("train", 32, 3), D.photos("train", 32, 3, gray_train=True)
    gray = [p for p in both.photos if torch.equal(p[0], p[1]) and torch.equal(p[1], p[2])]
    assert len(both.photos) == len(colour.photos) + len(gray) and len(gray) == len(
        [n for n in D.PHOTO_SPLITS["train"] if n in D.GRAY_PHOTOS])
    assert not any(torch.equal(p[0], p[1]) for p in colour.photos)
    for split in ("val", "test"):
        assert torch.equal(D.photos(split, 32, 3, gray_train=True).x, D.photos(split, 32, 3).x)


def test_extra_photos_adds_other_packages_photographs_to_training_only(monkeypatch):
    """data.extra_photos: the training split also crops the colour photographs scikit-learn and matplotlib ship (read
    from the installed packages); val / test unchanged; a package without the file gets an error naming it."""
    from diffsuite.modalities.image import data as D
    plain, extra = D.photos("train", 32, 3), D.photos("train", 32, 3, extra_photos=True)
    assert len(extra.photos) == len(plain.photos) + len(D.EXTRA_PHOTOS) == len(plain.photos) + 3
    assert all(torch.equal(a, b) for a, b in zip(plain.photos, extra.photos))  # the bundled ones first, unchanged
    assert all(p.shape[0] == 3 and min(p.shape[1:]) == 256 for p in extra.photos[len(plain.photos):])
    for split in ("val", "test"):
        assert torch.equal(D.photos(split, 32, 3, extra_photos=True).x, D.photos(split, 32, 3).x)
    monkeypatch.setattr(D, "EXTRA_PHOTOS", [("sklearn", "datasets/images/no_such.jpg")])
    with pytest.raises(FileNotFoundError, match="no_such.jpg not found in the installed sklearn"):
        D.photos("train", 32, 3, extra_photos=True)


def _is_crop_of(x, photo) -> bool:
    """Whether x (C, s, s), or its mirror image, is a window of photo (C, H, W)."""
    s = x.shape[-1]
    for y in (x, x.flip(-1)):  # windows whose top-left pixel matches, then the whole window
        corners = (photo[:, :photo.shape[1] - s + 1, :photo.shape[2] - s + 1] == y[:, :1, :1]).all(0).nonzero()
        if any(torch.equal(photo[:, r:r + s, c:c + s], y) for r, c in corners.tolist()):
            return True
    return False


def test_residual_sr_generates_the_residual_over_the_source(tmp_path, monkeypatch):
    """data.residual (SRDiff): the model's x0 is the clean image minus its source, and every output adds it back."""
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    r = _sr_recipe(residual=True)
    a = run.load(run.train(r, out_dir=tmp_path / "sr"))
    ds = a.task.build_dataset(a.recipe.data, "test")
    clean = a.task._images(a.recipe.data, "test").x[0]
    torch.testing.assert_close(ds[0]["x0"] + ds[0]["cond"]["source"], clean)
    x, cond = run.generate(a.denoiser, a.task, a.recipe, n=2, progress=False)
    raw = a.task.finish(x * 0, {"source": cond["source"]}, a.recipe)
    assert torch.equal(raw, cond["source"].clamp(-1, 1)) and x.abs().max() <= 1
    from diffsuite.core.denoiser import clip_x0  # benchmarks/image.py img2img --clip-x0: the transform replaced,
    from tiny import benchmark_script             # the weights the same
    bench = benchmark_script("image.py", "bench_image")
    assert a.denoiser.x0_transform is None and bench._sampling_x0(a, None) is a
    assert bench._sampling_x0(a, "clip").denoiser.x0_transform is clip_x0 and a.recipe.diffusion.clip_x0 == "clip"
    assert bench._sampling_x0(a, "none").denoiser.x0_transform is None
    src = cond["source"]  # --self-ensemble: set 0 is the plain draw (identity, seed 0); set 1 saw a quarter turn
    sets = bench._self_ensemble(a, x.shape, src, 2, 2)
    plain = a.task.finish(bench._draws(a.denoiser, x.shape, {"source": src}, "ddim", 2, 1)[0], {"source": src}, a.recipe)
    assert sets.shape == (2, *x.shape) and torch.equal(sets[0], plain) and not torch.allclose(sets[1], plain)
    r["data"]["degradation"] = "colorize"
    from diffsuite.core.config import ConfigError
    with pytest.raises(ConfigError, match=r"data.residual needs data.degradation in \('sr', 'inpaint', 'uncrop'\)"):
        run.train(r, out_dir=tmp_path / "bad")


@pytest.mark.parametrize("degradation", ["inpaint", "uncrop"])
def test_residual_inpainting_generates_the_residual_over_the_push_pull_fill(degradation, tmp_path, monkeypatch):
    """data.residual for Palette's inpainting and uncropping: x0 is the clean image minus the push-pull fill of its
    known pixels (0 where they are known), and finish adds that fill back."""
    from diffsuite.core.degrade import push_pull_fill
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    r = _sr_recipe(residual=True)
    r["data"]["degradation"] = degradation
    a = run.load(run.train(r, out_dir=tmp_path / "inpaint"))
    ds = a.task.build_dataset(a.recipe.data, "test")
    clean = a.task._images(a.recipe.data, "test").x[0]
    item = ds[0]  # (each item draws its own mask)
    src = item["cond"]["source"]
    known, m = src[:1], src[1:]
    assert 0 < m.sum() < m.numel() and torch.equal(item["x0"] * m, torch.zeros_like(clean))
    fill = push_pull_fill(known[None], m[None])[0]
    torch.testing.assert_close(item["x0"] + fill, clean)
    torch.testing.assert_close(a.task.finish(item["x0"][None], {"source": src[None]}, a.recipe)[0], clean)
    x, cond = run.generate(a.denoiser, a.task, a.recipe, n=2, progress=False)
    assert x.shape == (2, 1, 16, 16) and x.abs().max() <= 1
    import pickle  # picklable, so that data-loader workers can be spawned (macOS, Windows)
    torch.manual_seed(5)
    again = pickle.loads(pickle.dumps(ds))[0]
    torch.manual_seed(5)
    assert torch.equal(again["x0"], ds[0]["x0"])


def test_residual_scale_auto_is_measured_once_and_undone_by_finish(tmp_path, monkeypatch):
    """data.residual_scale=auto: the training residuals get unit std, the number is saved with the run, and finish
    divides it out again; a scale that is not a positive number is a ConfigError."""
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    r = _sr_recipe(residual=True, residual_scale="auto")
    a = run.load(run.train(r, out_dir=tmp_path / "sr"))
    s = a.recipe.data.residual_scale
    assert isinstance(s, float) and s > 2  # digits' residuals have std well below 0.5
    ds = a.task.build_dataset(a.recipe.data, "train")
    torch.manual_seed(0)
    x0 = torch.stack([ds[i]["x0"] for i in torch.randint(len(ds), (256,)).tolist()])
    assert 0.8 < x0.std().item() < 1.25
    item = ds[0]
    torch.testing.assert_close(a.task.finish(item["x0"][None], {"source": item["cond"]["source"][None]}, a.recipe)[0],
                               (item["x0"] / s + item["cond"]["source"]).clamp(-1, 1))
    from diffsuite.core.config import ConfigError
    r["data"]["residual_scale"] = -1.0
    with pytest.raises(ConfigError, match="data.residual_scale"):
        run.train(r, out_dir=tmp_path / "bad")


def test_rot90_turns_training_crops_through_all_eight_symmetries_of_the_square():
    """data.rot90 (with hflip): a training crop comes out as one of the 8 flips / quarter turns of a window of its
    photograph, and every one of them is drawn; without it, only the identity and the horizontal flip."""
    import numpy as np
    from diffsuite.modalities.image import data as D
    photo = np.random.default_rng(0).integers(0, 255, (8, 8, 1), dtype=np.uint8)  # an 8x8 crop of an 8x8 photograph
    base = D.to_model(photo[None])[0]
    symmetries = [base.rot90(k, (1, 2)).flip(-1) if f else base.rot90(k, (1, 2)) for k in range(4) for f in (0, 1)]

    def drawn(ds):
        seen = set()
        for seed in range(64):
            torch.manual_seed(seed)
            x = ds[0]
            seen.update(j for j, s in enumerate(symmetries) if torch.equal(x, s))
        return seen
    assert drawn(D.Patches([photo], 8, hflip=True, rot90=True)) == set(range(8))
    assert drawn(D.Patches([photo], 8, hflip=True)) == {0, 1}


def test_square_symmetries_are_eight_distinct_transforms_each_undone_by_its_inverse():
    """square_symmetry (the self-ensemble's transforms): k = 0 is the identity, the 8 differ on a generic image, and
    inverse=True undoes each, on a non-square image too."""
    from diffsuite.modalities.image.data import square_symmetry
    x = torch.randn(2, 3, 5, 7)
    outs = [square_symmetry(x, k) for k in range(8)]
    assert torch.equal(outs[0], x) and outs[1].shape == (2, 3, 7, 5)
    assert all(torch.equal(square_symmetry(y, k, inverse=True), x) for k, y in enumerate(outs))
    square = torch.randn(1, 1, 4, 4)
    assert len({tuple(square_symmetry(square, k).flatten().tolist()) for k in range(8)}) == 8
