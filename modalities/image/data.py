"""Image datasets: a recursive image folder (labels from sub-folders) and the built-in scikit-learn digits.

Pixels are scaled to [-1, 1] (DDPM Sec. 3.3). Items are x0 (C, H, W) or {"x0": x0, "cond": label}.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffsuite.core.utils import atomic_path, atomic_write_json, cache_dir, sha256_file, split_of

EXTENSIONS = {".png", ".jpg", ".jpeg"}
DIGITS_VERSION = 1


def to_model(u8: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1]."""
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class ArrayImages(torch.utils.data.Dataset):
    """In-memory images (uint8 N, H, W, C) with optional labels and random horizontal flips."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, hflip: bool = False,
                 classes: list[str] | None = None):
        self.x = to_model(images)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self.hflip, self.classes = hflip, classes or []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x if self.labels is None else {"x0": x, "cond": self.labels[i]}


# ---------------------------------------------------------------- image folder

def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the short side to `size` (bicubic), then crop the centre size x size square."""
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _label_of(path: Path, root: Path) -> str | None:
    rel = path.relative_to(root).parts
    return rel[0] if len(rel) > 1 else None


def scan_folder(root: str | Path) -> tuple[list[Path], list[str | None]]:
    """Image files under root (recursive) and their class (first-level sub-folder, None at the root)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise ValueError(f"image folder {str(root)!r} holds no images ({', '.join(sorted(EXTENSIONS))}, searched "
                         "recursively)")
    labels = [_label_of(p, root) for p in files]
    if any(lab is None for lab in labels) and any(lab is not None for lab in labels):
        n = sum(lab is None for lab in labels)
        raise ValueError(f"image folder {str(root)!r}: {n} images lie directly in the folder and the rest in "
                         "class sub-folders; put every image in a class sub-folder, or none")
    return files, labels


def to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit grayscale image (PIL modes I;16* or I) scaled to 8 bits (x / 257); other images unchanged.
    PIL's own convert('L') clips such values at 255, which turns a 16-bit image nearly white."""
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img, dtype=np.float64)
        if img.mode != "I" or a.max() > 255:
            a = a / 257.0
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")
    return img


def read_pixels(path: Path, channels: int, fit=None) -> np.ndarray:
    """One file as uint8 (H, W, channels) (16-bit grayscale scaled to 8 bits), after `fit` (a PIL image -> image)."""
    with Image.open(path) as img:
        img = to_8bit(img).convert("RGB" if channels == 3 else "L")
        arr = np.array(fit(img) if fit else img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One file as uint8 (size, size, channels), resized and centre-cropped."""
    return read_pixels(path, channels, lambda img: resize_center_crop(img, size))


def image_folder(root: str | Path, image_size: int, channels: int = 3, hflip: bool = False,
                 class_cond: bool = True) -> ArrayImages:
    """All images under root, decoded once into memory; unreadable files skipped with a warning."""
    if channels not in (1, 3):
        raise ValueError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    files, labels = scan_folder(root)
    images, kept, bad = [], [], []
    for p, lab in zip(files, labels):
        try:
            images.append(load_image(p, image_size, channels))
            kept.append(lab)
        except Exception as e:  # any decoder error: the file is unreadable
            bad.append(p)
            warnings.warn(f"image folder: skipping unreadable file {str(p)!r} ({type(e).__name__}: {e})")
    if bad:
        warnings.warn(f"image folder {str(root)!r}: skipped {len(bad)} unreadable file(s) of {len(files)}")
    if not images:
        raise ValueError(f"image folder {str(root)!r}: none of the {len(files)} image files could be read")
    classes = sorted({lab for lab in kept if lab is not None})
    y = np.array([classes.index(lab) for lab in kept]) if classes and class_cond else None
    return ArrayImages(np.stack(images), y, hflip, classes if y is not None else None)


# ---------------------------------------------------------------- built-in digits

def _digits_arrays(image_size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 digits as uint8 (N, S, S, 1): bilinear resize or zero padding to S."""
    from sklearn.datasets import load_digits
    d = load_digits()
    u8 = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    if mode == "resize":
        out = np.stack([np.asarray(Image.fromarray(a).resize((image_size, image_size), Image.BILINEAR)) for a in u8])
    elif mode == "pad":
        if image_size < 8:
            raise ValueError(f"data.digits_mode=pad needs image_size >= 8, got {image_size}")
        lo = (image_size - 8) // 2
        out = np.zeros((len(u8), image_size, image_size), np.uint8)
        out[:, lo:lo + 8, lo:lo + 8] = u8
    else:
        raise ValueError(f"data.digits_mode must be 'resize' or 'pad', got {mode!r}")
    return out[..., None], d.target.astype(np.int64)


def digits_split(n: int, test_fraction: float = 0.2, seed: int = 0) -> dict[str, np.ndarray]:
    """A fixed, seeded split of indices into train / test (the val split is the test split)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return {"train": np.sort(perm[n_test:]), "test": np.sort(perm[:n_test])}


def digits_cached(image_size: int = 16, mode: str = "resize") -> dict[str, np.ndarray]:
    """The digits arrays, built on first use into the cache with a manifest of settings and hashes."""
    settings = dict(version=DIGITS_VERSION, image_size=image_size, mode=mode, test_fraction=0.2, split_seed=0)
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    d = cache_dir("image", f"digits-{key}")
    f, manifest = d / "digits.npz", d / "manifest.json"
    if not (f.exists() and manifest.exists()):
        images, labels = _digits_arrays(image_size, mode)
        split = digits_split(len(images))
        with atomic_path(f) as tmp:
            np.savez(tmp, images=images, labels=labels, train=split["train"], test=split["test"])
        atomic_write_json(manifest, {"settings": settings, "n_images": len(images), "n_train": len(split["train"]),
                                     "n_test": len(split["test"]), "sha256": {f.name: sha256_file(f)}})
    with np.load(f, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def digits(split: str = "train", image_size: int = 16, mode: str = "resize", hflip: bool = False,
           class_cond: bool = True) -> ArrayImages:
    """The built-in digits dataset (10 classes, fixed split; 'val' is the test split)."""
    split = "test" if split == "val" else split
    if split not in ("train", "test"):
        raise ValueError(f"digits: split must be 'train', 'val' or 'test', got {split!r}")
    z = digits_cached(image_size, mode)
    idx = z[split]
    return ArrayImages(z["images"][idx], z["labels"][idx] if class_cond else None, hflip,
                       [str(i) for i in range(10)] if class_cond else None)


# ---------------------------------------------------------------- image-to-image pairs (SR3, Palette)

class Degraded(torch.utils.data.Dataset):
    """Pairs made on the fly from clean images: {"x0": clean (or residual * (clean - base(source)), SRDiff, when
    `residual` is a scale), "cond": {"source": degrade(clean)[, "label": y]}};
    `degrade` maps a batch (B, C, H, W) to its source, drawing any randomness (masks) from torch's global RNG, which
    the trainer seeds per item."""

    def __init__(self, base: ArrayImages, degrade, residual: float = 0.0, residual_base=None):
        """residual_base (with a residual): source -> what the residual is taken over; picklable (a functools.partial,
        not a lambda) so that data-loader workers can be spawned."""
        self.base, self.degrade, self.residual, self.residual_base = base, degrade, residual, residual_base
        self.x, self.labels, self.classes = base.x, base.labels, base.classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        x, label = (item["x0"], item["cond"]) if isinstance(item, dict) else (item, None)
        cond = {"source": self.degrade(x[None])[0]}
        if label is not None:
            cond["label"] = label
        return {"x0": self.residual * (x - self.residual_base(cond["source"])) if self.residual else x, "cond": cond}


# ---------------------------------------------------------------- photographs, as patches

#: scikit-image's bundled photographs (no download), split by photograph; the two motorcycle views are one scene
PHOTO_SPLITS = {
    "train": ["astronaut", "hubble_deep_field", "ihc", "motorcycle_left", "motorcycle_right", "retina", "brick", "coins",
              "gravel", "moon", "cell", "microaneurysms"],
    "val": ["coffee", "grass"],
    "test": ["chelsea", "rocket", "camera"],
}
GRAY_PHOTOS = {"brick", "coins", "gravel", "moon", "cell", "microaneurysms", "grass", "camera"}
#: colour photographs that other installed packages ship (package, path inside it): training only, with extra_photos
EXTRA_PHOTOS = [("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg"),
                ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg")]


def _fit_short_side(img: Image.Image, short: int) -> Image.Image:
    s = short / min(img.size)
    return img if s >= 1 else img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC)


def _photo(path: Path, channels: int, short_side: int) -> np.ndarray:
    return read_pixels(path, channels, lambda img: _fit_short_side(img, short_side))


def larger_levels(path: Path, channels: int, short_side: int) -> list[np.ndarray]:
    """The photograph at the short sides short_side * sqrt(2)^k (k = 1, 2, ...) below its own, and at its own size:
    the levels that scale augmentation draws crops from besides the short_side one."""
    full = read_pixels(path, channels, None)
    n, sides, k = min(full.shape[:2]), [], 1
    while (side := short_side * 2 ** (k / 2)) < n:
        sides.append(round(side))
        k += 1
    return [_photo(path, channels, s) for s in sides] + ([full] if n > short_side else [])


def photo_files(split: str, channels: int, gray: bool = False, extra: bool = False) -> list[Path]:
    """The split's bundled photographs' files; RGB (channels 3) takes only the colour photographs unless `gray`
    (then the grayscale ones too, read as gray RGB); `extra` adds EXTRA_PHOTOS."""
    import skimage.data
    folder = Path(skimage.data.__file__).parent  # the files ship in the wheel: read them, never fetch
    names = [n for n in PHOTO_SPLITS[split] if channels == 1 or gray or n not in GRAY_PHOTOS]
    files = [next(folder.glob(f"{n}.*"), None) for n in names]
    missing = [n for n, f in zip(names, files) if f is None]
    if missing:
        raise FileNotFoundError(f"photos: {missing[0]} is not among scikit-image's bundled photographs in {folder}")
    return files + (extra_photo_files() if extra else [])


def extra_photo_files() -> list[Path]:
    """EXTRA_PHOTOS' files, where their packages installed them."""
    import importlib.util
    files = []
    for package, rel in EXTRA_PHOTOS:
        spec = importlib.util.find_spec(package)
        f = Path(spec.origin).parent / rel if spec and spec.origin else None
        if f is None or not f.is_file():
            raise FileNotFoundError(f"data.extra_photos: {rel} not found in the installed {package}; install {package} "
                                    "or set data.extra_photos=false")
        files.append(f)
    return files


class Patches(torch.utils.data.Dataset):
    """Random size x size crops of whole photographs (with horizontal flips): item i is a crop of the photograph
    whose grid cell i is, at a random offset (torch's global RNG, seeded per item by the trainer). With `levels`
    (larger versions of each photograph, `larger_levels`), the crop comes from a level drawn uniformly among the
    photograph and its levels: scale augmentation. With `rot90`, each crop also takes a random quarter turn (with
    hflip: the 8 symmetries of the square, the flips and rotations of EDSR, Lim et al. 2017)."""

    def __init__(self, photos: list[np.ndarray], size: int, hflip: bool = True,
                 levels: list[list[np.ndarray]] | None = None, rot90: bool = False):
        small = [p.shape[:2] for p in photos if min(p.shape[:2]) < size]
        if small:
            raise ValueError(f"photographs smaller than the {size}x{size} patch: {small}")
        self.photos = [to_model(p[None])[0] for p in photos]
        self.levels = [[p, *(to_model(q[None])[0] for q in more)] for p, more in zip(self.photos, levels)] \
            if levels else None
        self.size, self.hflip, self.rot90 = size, hflip, rot90
        self.owner = [k for k, p in enumerate(photos) for _ in range((p.shape[0] // size) * (p.shape[1] // size))]
        self.x, self.labels, self.classes = None, None, []

    def __len__(self) -> int:
        return len(self.owner)

    def __getitem__(self, i):
        p = self.photos[self.owner[i]]
        if self.levels:
            options = self.levels[self.owner[i]]
            p = options[int(torch.randint(len(options), ()))]
        top = int(torch.randint(p.shape[1] - self.size + 1, ()))
        left = int(torch.randint(p.shape[2] - self.size + 1, ()))
        turns = int(torch.randint(4, ())) if self.rot90 else 0
        flip = self.hflip and bool(torch.rand(()) < 0.5)
        return square_symmetry(p[:, top:top + self.size, left:left + self.size], turns + 4 * flip)


def square_symmetry(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The k-th of the 8 symmetries of the square on the last two dims (k % 4 quarter turns, then a horizontal flip
    when k >= 4), or its inverse: the transforms of EDSR's self-ensemble (Lim et al. 2017)."""
    turns, flip = k % 4, k >= 4
    if inverse:
        x = x.flip(-1) if flip else x
        return x.rot90(-turns, (-2, -1)) if turns else x
    x = x.rot90(turns, (-2, -1)) if turns else x  # (k = 0, the training crops' common case: no copy)
    return x.flip(-1) if flip else x


def grid_patches(photos: list[np.ndarray], size: int) -> ArrayImages:
    """Every non-overlapping size x size tile of the photographs (a fixed evaluation set)."""
    tiles = [p[r:r + size, c:c + size] for p in photos for r in range(0, p.shape[0] - size + 1, size)
             for c in range(0, p.shape[1] - size + 1, size)]
    return ArrayImages(np.stack(tiles))


def _as_patches(arrays: list[np.ndarray], split: str, size: int, hflip: bool, files: list[Path], channels: int,
                short_side: int, scale_aug: bool, rot90: bool):
    if split != "train":
        return grid_patches(arrays, size)
    levels = [larger_levels(f, channels, short_side) for f in files] if scale_aug else None
    return Patches(arrays, size, hflip, levels, rot90)


def photos(split: str, size: int, channels: int, hflip: bool = True, short_side: int = 256, scale_aug: bool = False,
           gray_train: bool = False, rot90: bool = False, extra_photos: bool = False):
    """The bundled photographs as patches: random crops for training (from random levels of each photograph's
    pyramid with scale_aug; RGB training with the grayscale photographs too with gray_train, and other packages'
    photographs with extra_photos), the tiles of a fixed grid for val / test."""
    if split not in PHOTO_SPLITS:
        raise ValueError(f"photos: split must be one of {sorted(PHOTO_SPLITS)}, got {split!r}")
    train = split == "train"
    files = photo_files(split, channels, gray_train and train, extra_photos and train)
    arrays = [_photo(f, channels, short_side) for f in files]
    return _as_patches(arrays, split, size, hflip, files, channels, short_side, scale_aug, rot90)


def folder_patches(root: str | Path, split: str, size: int, channels: int, hflip: bool = True, short_side: int = 256,
                   scale_aug: bool = False, rot90: bool = False):
    """A folder of one's own photographs as patches, like `photos`: split by file name (a stable hash: 10% val, 10%
    test), unreadable files skipped with a warning."""
    files = [f for f in scan_folder(root)[0] if split_of(f.name) == split]
    if not files:
        raise ValueError(f"image folder {str(root)!r}: none of its photographs falls in the {split!r} split (split by "
                         "file name: about 10% val, 10% test); add photographs")
    arrays, good, bad = [], [], []
    for f in files:
        try:
            arrays.append(_photo(f, channels, short_side))
            good.append(f)
        except (OSError, ValueError):
            bad.append(f.name)
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) under {root}: {', '.join(bad[:5])}")
    small = [a.shape[:2] for a in arrays if min(a.shape[:2]) < size]
    if small:
        raise ValueError(f"image folder {str(root)!r}: {len(small)} photograph(s) smaller than the {size}x{size} patch "
                         f"(e.g. {small[0][1]}x{small[0][0]} after shrinking to a {short_side}-pixel short side)")
    return _as_patches(arrays, split, size, hflip, good, channels, short_side, scale_aug, rot90)
