"""Latent diffusion (core.autoencoder, core.latent): the KL autoencoder trains through the core trainer, its scale
factor is measured and stored, and any tensor task runs in its latent space with decoded samples."""
import pytest
import torch

from diffsuite.core.autoencoder import AutoencoderLoss, KLAutoencoder, kl_standard_normal, measure_scale
from diffsuite.core.config import ConfigError
from diffsuite.modalities.image.autoencoder import build_decoder, build_encoder
from diffsuite.recipes import run

torch.set_num_threads(1)


def _ae_recipe(steps=40, **ae):
    return {"task": "image", "name": "ae_test", "model": {"preset": "tiny"},
            "data": {"source": "digits", "image_size": 16, "channels": 1, "class_cond": False},
            "autoencoder": {"latent_channels": 2, "factor": 2, "channels": 16, "scale_batches": 4, **ae},
            "train": {"steps": steps, "batch_size": 16, "lr": 2e-3, "log_every": 10, "progress": False,
                      "tensorboard": False, "mixed_precision": "no"}}


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ae")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFSUITE_CACHE", str(root / "cache"))
        return run.train(_ae_recipe(), out_dir=root / "ae"), root


@pytest.mark.parametrize("factor,size", [(1, 12), (2, 16), (4, 24), (8, 32)])
def test_encode_decode_shapes_for_any_size_divisible_by_f(factor, size):
    ae = KLAutoencoder(build_encoder(3, 4, factor, 16, 1), build_decoder(3, 4, factor, 16, 1), factor, 4)
    x = torch.randn(2, 3, size, size + factor)
    mu, logvar = ae.encode(x)
    assert mu.shape == logvar.shape == (2, 4, size // factor, (size + factor) // factor)
    assert ae.decode(mu).shape == x.shape
    if factor > 1:
        with pytest.raises(ValueError, match=f"not divisible by its downsampling factor f={factor}"):
            ae.encode(torch.randn(1, 3, size + 1, size))
    with pytest.raises(ValueError, match="expected a power of 2"):
        build_encoder(3, 4, 3, 16, 1)


def test_loss_is_ldm_reconstruction_plus_weighted_kl():
    ae = KLAutoencoder(build_encoder(1, 2, 2, 16, 1), build_decoder(1, 2, 2, 16, 1), 2, 2)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    g = torch.Generator().manual_seed(0)
    loss, _ = AutoencoderLoss(kl_weight=0.5, recon="l2")(lambda x, gen: ae(x, gen), x, None, g)
    x_rec, mu, logvar = ae(x, torch.Generator().manual_seed(0))
    want = (x_rec - x).pow(2).flatten(1).mean(1) + 0.5 * kl_standard_normal(mu, logvar) / 64
    torch.testing.assert_close(loss, want)
    assert kl_standard_normal(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0


def test_the_bernoulli_reconstruction_is_the_likelihood_and_pulls_missed_notes():
    """recon: bce is -log p(x | logit D(z)) per element for x in {-1, 1}; at a silent decoding (logit -5) a missed
    note pulls with 1 - p and an empty cell with p, where L1 pulls every cell alike (why L1 decoded rolls as silence)."""
    from diffsuite.core.autoencoder import reconstruction_error
    x = torch.tensor([1.0, -1.0])
    rec = torch.full((2,), -5.0, requires_grad=True)
    e = reconstruction_error(rec, x, "bce")
    p = torch.sigmoid(torch.tensor(-5.0))
    torch.testing.assert_close(e.detach(), torch.stack([-torch.log(p), -torch.log(1 - p)]))
    (g,) = torch.autograd.grad(e.sum(), rec)
    torch.testing.assert_close(g, torch.stack([p - 1, p]))
    rec1 = torch.full((2,), -0.9, requires_grad=True)
    (g1,) = torch.autograd.grad(reconstruction_error(rec1, x, "l1").sum(), rec1)
    assert g1.abs().tolist() == [1.0, 1.0]


def test_the_scale_factor_gives_unit_variance_latents_and_is_stored(ae_run, monkeypatch):
    path, root = ae_run
    monkeypatch.setenv("DIFFSUITE_CACHE", str(root / "cache"))
    ae = run.load_autoencoder(path)
    assert float(ae.scale) > 0
    task = run.get_task("image")
    x = task.build_dataset(run.load_recipe(_ae_recipe()).data, "train").x
    z = ae.latents(x, torch.Generator().manual_seed(1))
    assert 0.9 < z.std().item() < 1.1  # measured on 4 batches of 16, checked on all 1437 training digits
    assert float(ae.scale) == pytest.approx(measure_scale(ae, [x[:64]], torch.Generator().manual_seed(0)), rel=0.2)


def test_autoencoder_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    r = _ae_recipe(steps=6)
    a = run.train(r, out_dir=tmp_path / "a")
    run.train(r, out_dir=tmp_path / "b", stop_at=3)
    b = run.train(r, out_dir=tmp_path / "b", resume="auto")
    from diffsuite.core.checkpoint import load_checkpoint
    ta, _, _ = load_checkpoint(run.resolve_checkpoint(a))
    tb, _, _ = load_checkpoint(run.resolve_checkpoint(b))
    for group in ("model", "ema"):
        assert all(torch.equal(ta[group][k], tb[group][k]) for k in ta[group]), group
    assert float(ta["model"]["scale"]) > 0


def test_the_cached_latent_set_is_kept_on_disk_with_a_manifest_and_read_back(ae_run, tmp_path, monkeypatch):
    """Encoded once into $DIFFSUITE_CACHE/latents (safetensors + manifest of settings and sha256), read back without
    encoding by the next run, encoded again with a warning naming the file when it no longer matches its manifest."""
    import json
    import warnings
    from diffsuite.core import latent
    path, _ = ae_run
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    r = run.load_recipe({**_ae_recipe(), "data": {**_ae_recipe()["data"], "class_cond": True}}).data  # labels too
    task = latent.LatentTask(run.get_task("image"), run.load_recipe(
        {**_ae_recipe(), "autoencoder": None, "latent": {"autoencoder": str(path)}}).latent)
    first = task.build_dataset(r, "train")
    (f,) = (tmp_path / "cache" / "latents").glob("*/latents.safetensors")
    m = json.loads((f.parent / "manifest.json").read_text())
    assert m["items"] == len(first) > 1000 and m["shape"] == [2, 8, 8] and m["settings"]["split"] == "train"
    monkeypatch.setattr(latent, "encode_items", lambda *a, **k: pytest.fail("encoded again despite the cache"))
    again = task.build_dataset(r, "train")
    assert torch.equal(again.z, first.z) and torch.equal(torch.stack(again.conds), torch.stack(first.conds))
    monkeypatch.undo()
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    f.write_bytes(f.read_bytes()[:-8] + bytes(8))  # the tail of the last latent overwritten
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        mended = task.build_dataset(r, "train")
    assert any(str(f) in str(x.message) for x in w) and torch.equal(mended.z, first.z)
    assert len(list((tmp_path / "cache" / "latents").iterdir())) == 1
    task.build_dataset(r, "test")  # another split is another set
    assert len(list((tmp_path / "cache" / "latents").iterdir())) == 2


def test_latent_diffusion_trains_and_samples_decoded_images(ae_run, tmp_path, monkeypatch):
    path, root = ae_run
    monkeypatch.setenv("DIFFSUITE_CACHE", str(root / "cache"))
    over = [f"latent.autoencoder={path}", "train.steps=4", "train.batch_size=8", "train.progress=false",
            "train.tensorboard=false", "sample.n=4", "sample.steps=3"]
    out = run.train("image_digits_latent", over, out_dir=tmp_path / "ld")
    a = run.load(out)
    assert a.recipe.model.image_size == 8 and a.recipe.model.in_channels == 2
    assert a.task.sample_shape(a.recipe.model, a.recipe.data) == (2, 8, 8)
    x, cond = run.generate(a.denoiser, a.task, a.recipe, n=4, steps=3, progress=False)
    assert x.shape == (4, 1, 16, 16) and torch.isfinite(x).all()  # decoded to the data's pixels
    files = a.task.save_samples(x, cond, tmp_path / "s", a.recipe)
    assert (tmp_path / "s" / "samples.png").is_file() and "grid" in files


def test_latent_mistakes_are_clear_errors(ae_run, tmp_path, monkeypatch):
    path, root = ae_run
    monkeypatch.setenv("DIFFSUITE_CACHE", str(root / "cache"))
    with pytest.raises(ConfigError, match="is an autoencoder, not a diffusion model"):
        run.load(path)
    with pytest.raises(ConfigError, match="not an autoencoder"):
        run.train("image_digits_latent", [f"latent.autoencoder={_diffusion_run(tmp_path)}", "train.steps=1"],
                  out_dir=tmp_path / "bad")
    unfinished = tmp_path / "unfinished"
    run.train(_ae_recipe(steps=4), out_dir=unfinished, stop_at=2)
    with pytest.raises(ConfigError, match="scale factor was never measured"):
        run.load_autoencoder(unfinished)
    with pytest.raises(ConfigError, match="not divisible by its downsampling factor"):
        run.train("image_digits_latent", [f"latent.autoencoder={path}", "data.image_size=15", "train.steps=1"],
                  out_dir=tmp_path / "odd")


def _diffusion_run(tmp_path):
    return run.train("image_digits_quick", ["train.steps=1", "train.progress=false", "sample.n=1", "sample.steps=2"],
                     out_dir=tmp_path / "pixel")


def test_train_autoencoder_command_refuses_other_recipes(tmp_path):
    from diffsuite.recipes.cli import main
    assert main(["train-autoencoder", "image_digits_quick", "--out", str(tmp_path / "x")]) != 0


def test_inpainting_in_latent_space_keeps_the_known_region(ae_run, tmp_path, monkeypatch):
    """The core's replacement inpainting on the latents, the mask downsampled (a latent cell is known where all its
    pixels are): the decoded known region stays within the autoencoder's own reconstruction error of it + 0.1."""
    import json
    from diffsuite.modalities.image.cli import inpaint
    from diffsuite.modalities.image.edit import preset_mask
    path, root = ae_run
    monkeypatch.setenv("DIFFSUITE_CACHE", str(root / "cache"))
    out = run.train("image_digits_latent", [f"latent.autoencoder={path}", "train.steps=2", "train.progress=false",
                                            "train.tensorboard=false", "sample.n=2", "sample.steps=2"],
                    out_dir=tmp_path / "ld")
    a = run.load(out)
    m = preset_mask("left-half", 16)
    known = a.task.pixel_task.build_dataset(a.recipe.data, "test").x[:4]
    z, m_z = a.task.inpaint_space(known, m)
    assert z.shape == (4, 2, 8, 8) and m_z.shape[-2:] == (8, 8) and m_z.sum() == m.sum() / 4
    files = inpaint(a, tmp_path / "inp", mask="left-half", n=4, steps=5)
    from PIL import Image
    import numpy as np
    grid = np.asarray(Image.open(files["grid"]))
    assert json.loads((tmp_path / "inp" / "inpaint.json").read_text())["n"] == 4 and grid.ndim == 2
    from diffsuite.modalities.image.cli import sample_images
    from diffsuite.modalities.image import edit
    hook = edit.inpaint_hook(a.denoiser.schedule, m_z, z)
    x, _ = sample_images(a.denoiser, a.task, a.recipe, 4, "ddim", 5, 0.0, 0, hooks=[hook],
                         cond=torch.zeros(4, dtype=torch.long))
    with torch.no_grad():
        recon = a.task.ae.from_latents(z)
    keep = m.bool().expand_as(known)
    err = (x - known).abs()[keep].mean().item()
    assert err <= (recon - known).abs()[keep].mean().item() + 0.1


def test_music_rolls_run_in_an_autoencoders_latent_space(tmp_path, monkeypatch):
    """The piano-roll task through the same wrapper: its roll U-Net on the latents (no patches; the chord planes
    drawn at the roll's size and folded to the latent's), per-item encoding (cache: false) and decoded samples written
    as MIDI."""
    from tiny import recipe as tiny_recipe
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    r = tiny_recipe("music", tmp_path)
    ae = dict(r, name="bach_ae", autoencoder={"latent_channels": 3, "factor": 4, "channels": 16, "scale_batches": 2})
    ae.pop("sample")
    ae_dir = run.train(ae, out_dir=tmp_path / "ae")
    ld = dict(r, name="bach_ld", latent={"autoencoder": str(ae_dir), "cache": False})
    ld["diffusion"] = dict(r["diffusion"], clip_x0="none")
    a = run.load(run.train(ld, out_dir=tmp_path / "ld"))
    assert a.recipe.model.in_channels == 3 and a.recipe.model.patch == 1 and a.recipe.model.chord_fold == 4
    assert a.denoiser.net.inp.in_channels == 3 + 3 * 16  # the latent and the folded chord planes
    assert a.task.sample_shape(a.recipe.model, a.recipe.data) == (3, 8, 8)
    x, cond = run.generate(a.denoiser, a.task, a.recipe, n=2, steps=2, progress=False)
    assert x.shape == (2, 2, 32, 32)
    files = a.task.save_samples(x, cond, tmp_path / "s", a.recipe)
    assert any(k.startswith("midi") for k in files)
