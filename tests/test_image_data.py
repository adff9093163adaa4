"""Image data: the folder dataset (corrupt files, empty folders, labels), the digits cache, the task, checkpoints."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffsuite.modalities.image import data as D
from diffsuite.modalities.image.task import DataConfig, ImageTask, ModelConfig, save_grid

torch.set_num_threads(1)


def _write(path, size=(20, 12), color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_folder_labels_resize_crop_and_corrupt_file(tmp_path):
    _write(tmp_path / "cats" / "a.png")
    _write(tmp_path / "cats" / "deep" / "b.JPG", color=(0, 0, 255))
    _write(tmp_path / "dogs" / "c.jpeg", size=(8, 30))
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "dogs" / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning) as rec:
        ds = D.image_folder(tmp_path, 8, channels=3)
    msgs = [str(w.message) for w in rec]
    assert any("broken.png" in m for m in msgs) and any("skipped 1 unreadable file(s) of 4" in m for m in msgs)
    assert len(ds) == 3 and ds.classes == ["cats", "dogs"]
    assert [int(ds[i]["cond"]) for i in range(3)] == [0, 0, 1]
    x = ds[0]["x0"]
    assert x.shape == (3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert abs(float(x[0].mean()) - (200 / 127.5 - 1)) < 0.02  # red channel value survives
    gray = D.image_folder(tmp_path, 8, channels=1, class_cond=False)
    assert gray[0].shape == (1, 8, 8)


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="holds no images"):
        D.image_folder(tmp_path, 8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.image_folder(tmp_path / "nope", 8)
    (tmp_path / "only.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of the 1 image files"):
        D.image_folder(tmp_path, 8)


def test_hflip_flips(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, :4] = 255
    Image.fromarray(img).save(tmp_path / "half.png")
    ds = D.image_folder(tmp_path, 8, hflip=True)
    torch.manual_seed(0)
    seen = {float(ds[0][0, 0, 0]) for _ in range(20)}
    assert seen == {-1.0, 1.0}


def test_digits_cache_split_and_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path))
    tr, te = D.digits("train"), D.digits("test")
    assert len(tr) + len(te) == 1797 and abs(len(te) - 359) <= 1
    item = tr[0]
    assert item["x0"].shape == (1, 16, 16) and item["x0"].min() >= -1 and item["x0"].max() <= 1
    assert set(tr.labels.tolist()) == set(range(10))
    man = json.loads(next(tmp_path.rglob("manifest.json")).read_text())
    assert man["n_test"] == len(te) and "digits.npz" in man["sha256"]
    again = D.digits("train")
    assert torch.equal(again.x, tr.x)
    pad = D.digits("test", 16, "pad")
    assert torch.all(pad.x[:, :, :4] == -1)  # zero border from padding 8 -> 16


def test_task_shapes_cond_and_grid(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path))
    task = ImageTask()
    m, d = ModelConfig(preset="tiny", num_classes=10), DataConfig()

    class R:  # the recipe fields the task reads
        model, data = m, d
    assert task.sample_shape(m, d) == (1, 16, 16)
    cond = task.sample_cond(23, R)
    assert cond.tolist()[:12] == list(range(10)) + [0, 1]
    x = torch.rand(23, 1, 16, 16) * 2 - 1
    files = task.save_samples(x, cond, tmp_path / "s", R)
    grid = Image.open(files["grid"])
    info = json.loads(open(files["json"]).read())
    assert info["nrow"] == 3 and info["labels"][:3] == [0, 0, 0] and info["labels"][29] == -1
    assert grid.size[1] > grid.size[0]  # 10 rows (classes) x 3 columns
    with pytest.raises(ValueError, match="built for 1x16x16 but data gives 1x32x32"):
        task.sample_shape(m, DataConfig(image_size=32))
    net = task.build_net(m, None)
    assert net(x[:2], torch.zeros(2), cond[:2]).shape == (2, 1, 16, 16)


def test_save_grid_rgb(tmp_path):
    p = save_grid(torch.zeros(5, 3, 4, 4), tmp_path / "g.png", nrow=2)
    assert Image.open(p).size == (2 * 5 + 1, 3 * 5 + 1)
