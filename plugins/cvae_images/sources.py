"""Image datasets from files: MNIST, Fashion-MNIST, CIFAR-10 and CelebA (downloaded through torchvision
when `download = true`) and any folder of images with one subfolder per class.

Nothing is downloaded unless asked: with `download = false` (the default) a missing dataset is an
error that says where its files are expected and how to get them. Splits are kept as 8-bit pixels
(`ByteImages`); CelebA, too big for that at 200,000 images, is read from disk batch by batch.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

import cvae

from .data import ByteImages, byte_target, split_indices

__all__ = ["load_mnist", "load_fashion_mnist", "load_cifar10", "load_celeba", "load_image_folder", "CelebAImages",
           "DEFAULT_ROOT"]

DEFAULT_ROOT = "~/.cache/cvae/datasets"
MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _root(root: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(root)))


def _missing(name: str, where: Path, what: str, option_root: str) -> cvae.CVAEError:
    return cvae.CVAEError(
        f"dataset {name!r}: files not found; expected {what} under {where}. Get them with "
        f"--set data.options.download=true (downloads into data.options.root = {option_root!r}), or point "
        f"data.options.root at a directory that holds them")


def _download(name: str, cls_name: str, root: Path, **kwargs: Any) -> None:
    """Download through torchvision's own dataset class; a network failure is a clear error."""
    import torchvision.datasets

    try:
        getattr(torchvision.datasets, cls_name)(str(root), download=True, **kwargs)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError... for a failed download
        reason = " ".join(str(exc).split())  # torchvision's message spans lines, one per mirror tried
        raise cvae.CVAEError(f"dataset {name!r}: download into {root} failed ({reason}). Without a network, copy "
                             f"the dataset's files under {root} and leave data.options.download=false") from exc


# -- MNIST and Fashion-MNIST ---------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), plain or gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise cvae.CVAEError(f"{path} is not an unsigned-byte IDX file (MNIST format)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise cvae.CVAEError(f"{path} is truncated: {body.size} bytes for shape {shape}")
    return body.reshape(shape)


def _find_idx(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _load_idx_set(name: str, cls_name: str, classes: tuple[str, ...], root: str, download: bool) -> cvae.DataBundle:
    base = _root(root)
    # torchvision's layout first (root/MNIST/raw), then the files directly in root (as some packages ship them)
    folders = [base / cls_name / "raw", base / cls_name, base]
    files = {f"{part}-{kind}": f"{part}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
             for part in ("train", "t10k") for kind in ("images", "labels")}
    found = {k: _find_idx(folders, stem) for k, stem in files.items()}
    if any(v is None for v in found.values()) and download:
        _download(name, cls_name, base)
        found = {k: _find_idx(folders, stem) for k, stem in files.items()}
    if any(v is None for v in found.values()):
        raise _missing(name, base / cls_name / "raw", ", ".join(f"{s}[.gz]" for s in files.values()), root)
    info = {"label": cvae.ConditionInfo("label", (), 10, classes)}
    splits = []
    for part in ("train", "t10k"):
        images = torch.from_numpy(_read_idx(found[f"{part}-images"]).copy()).unsqueeze(1)
        labels = torch.from_numpy(_read_idx(found[f"{part}-labels"]).astype(np.int64))
        splits.append(ByteImages(images, {"label": labels}, info, name=f"{name}/{'test' if part == 't10k' else part}"))
    return cvae.DataBundle(name, byte_target((1, 28, 28)), info, *splits)


def load_mnist(*, root: str = DEFAULT_ROOT, download: bool = False) -> cvae.DataBundle:
    """MNIST: 60,000 training and 10,000 test digits, 1x28x28, 256 grey levels, condition "label"."""
    return _load_idx_set("mnist", "MNIST", MNIST_CLASSES, root, download)


def load_fashion_mnist(*, root: str = DEFAULT_ROOT, download: bool = False) -> cvae.DataBundle:
    """Fashion-MNIST: 60,000 + 10,000 clothing images, 1x28x28, 256 grey levels, condition "label"."""
    return _load_idx_set("fashion_mnist", "FashionMNIST", FASHION_CLASSES, root, download)


# -- CIFAR-10 -------------------------------------------------------------------------------------------


def load_cifar10(*, root: str = DEFAULT_ROOT, download: bool = False) -> cvae.DataBundle:
    """CIFAR-10: 50,000 training and 10,000 test images, 3x32x32, 8 bits per channel, condition "label"."""
    folder = _root(root) / "cifar-10-batches-py"
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if not all((folder / b).is_file() for b in batches) and download:
        _download("cifar10", "CIFAR10", _root(root))
    if not all((folder / b).is_file() for b in batches):
        raise _missing("cifar10", folder, ", ".join(batches) + " (the python version of CIFAR-10)", root)
    info = {"label": cvae.ConditionInfo("label", (), 10, CIFAR_CLASSES)}

    def read(names: list[str], part: str) -> ByteImages:
        images, labels = [], []
        for b in names:
            with open(folder / b, "rb") as f:
                # the python pickles of CIFAR-10 are the dataset's own format (torchvision reads them the same way)
                entry = pickle.load(f, encoding="latin1")  # noqa: S301
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(entry.get("labels", entry.get("fine_labels", [])))
        return ByteImages(torch.from_numpy(np.concatenate(images)), {"label": torch.tensor(labels, dtype=torch.int64)},
                          info, name=f"cifar10/{part}")

    return cvae.DataBundle("cifar10", byte_target((3, 32, 32)), info, read(batches[:5], "train"),
                           read(batches[5:], "test"))


# -- CelebA ---------------------------------------------------------------------------------------------


def _read_image(path: Path, grayscale: bool) -> torch.Tensor:
    """An image file as uint8 (C, H, W), RGB or grey, through PIL (which torchvision's own readers use)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("L" if grayscale else "RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise cvae.CVAEError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(array.copy()).reshape(*array.shape[:2], -1).permute(2, 0, 1)


def _resize(image: torch.Tensor, size: int, crop: int | None) -> torch.Tensor:
    """uint8 (C, H, W) -> centre crop to `crop` (if given) -> `size` x `size`, antialiased."""
    import torchvision.transforms.v2.functional as TF

    if crop:
        image = TF.center_crop(image, [crop, crop])
    if tuple(image.shape[-2:]) != (size, size):
        image = TF.resize(image, [size, size], antialias=True)
    return image


class CelebAImages(Dataset):
    """One CelebA split read from disk: items are ({"attributes": (k,) floats in {0, 1}}, image in [0, 1])."""

    def __init__(self, folder: Path, files: list[str], attributes: np.ndarray, size: int, crop: int) -> None:
        self.folder, self.files, self.size, self.crop = folder, files, size, crop
        self.attributes = torch.from_numpy(attributes.astype(np.float32))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        image = _resize(_read_image(self.folder / self.files[i], grayscale=False), self.size, self.crop)
        return {"attributes": self.attributes[i]}, image.to(torch.get_default_dtype()) / 255.0


def load_celeba(*, root: str = DEFAULT_ROOT, download: bool = False, size: int = 64, crop: int = 148,
                attributes: list[str] | None = None) -> cvae.DataBundle:
    """CelebA faces (aligned), centre-cropped to `crop` pixels and resized to `size` x `size`, with the
    40 binary attributes (or the listed `attributes`) as the vector condition "attributes"; the
    official train and test partitions. Images are decoded from disk per batch."""
    base = _root(root) / "celeba"
    needed = ("list_attr_celeba.txt", "list_eval_partition.txt")
    present = lambda: all((base / n).is_file() for n in needed) and (base / "img_align_celeba").is_dir()  # noqa: E731
    if not present() and download:
        _download("celeba", "CelebA", _root(root), split="all", target_type="attr")
    if not present():
        raise _missing("celeba", base, "img_align_celeba/*.jpg, list_attr_celeba.txt and list_eval_partition.txt "
                       "(torchvision's layout)", root)
    lines = (base / "list_attr_celeba.txt").read_text().split("\n")
    names = lines[1].split()
    rows = [line.split() for line in lines[2:] if line.strip()]
    files = [r[0] for r in rows]
    table = np.array([[int(v) > 0 for v in r[1:]] for r in rows], dtype=bool).reshape(len(rows), len(names))
    chosen = list(attributes) if attributes is not None else names
    unknown = [a for a in chosen if a not in names]
    if unknown or not chosen:
        raise cvae.CVAEError(f"dataset 'celeba': unknown attributes {unknown or chosen}; known: {', '.join(names)}")
    table = table[:, [names.index(a) for a in chosen]]
    partition = {}
    for line in (base / "list_eval_partition.txt").read_text().split("\n"):
        if line.strip():
            f, p = line.split()
            partition[f] = int(p)
    split = np.array([partition.get(f, -1) for f in files])
    info = {"attributes": cvae.ConditionInfo("vector", (len(chosen),), class_names=tuple(chosen))}
    folder = base / "img_align_celeba"
    parts = []
    for part, code in (("train", 0), ("test", 2)):
        idx = np.flatnonzero(split == code)
        if len(idx) == 0:
            raise cvae.CVAEError(f"dataset 'celeba': list_eval_partition.txt puts no image in the {part} split "
                                 f"(partition {code})")
        parts.append(CelebAImages(folder, [files[i] for i in idx], table[idx], int(size), int(crop)))
    return cvae.DataBundle("celeba", byte_target((3, int(size), int(size))), info, *parts)


# -- a folder of images ------------------------------------------------------------------------------


def _fit_to(image: torch.Tensor, size: tuple[int, int], fit: str) -> torch.Tensor:
    """`image` at `size`: scaled to it, the aspect ratio distorted where it differs (`fit="stretch"`), or
    scaled to cover it and centre-cropped, the aspect ratio kept (`"crop"`)."""
    import torchvision.transforms.v2.functional as TF

    if fit == "stretch":
        return TF.resize(image, list(size), antialias=True)
    h, w = image.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    covering = [max(size[0], round(h * scale)), max(size[1], round(w * scale))]
    return TF.center_crop(TF.resize(image, covering, antialias=True), list(size))


def load_image_folder(*, root: str, size: int | list[int] | None = None, grayscale: bool = False,
                      fit: str = "stretch", test_fraction: float = 0.2, split_seed: int = 0) -> cvae.DataBundle:
    """Every image under `root/<class>/` (class = subfolder name, sorted), brought to `size` (an int
    for square images or [height, width]; default: the first image's size), RGB or `grayscale`, with
    condition "label" and a fixed-seed split stratified by class. An image of another size is scaled to
    `size` (`fit="stretch"`, the default, which distorts an image of another aspect ratio), or scaled to
    cover it and centre-cropped, keeping its aspect ratio (`"crop"`). All images are held in memory as
    8-bit pixels."""
    if not isinstance(grayscale, bool):
        raise cvae.CVAEError(f"dataset 'image_folder': grayscale must be true or false, got {grayscale!r}")
    if fit not in ("crop", "stretch"):
        raise cvae.CVAEError(f"dataset 'image_folder': fit must be \"stretch\" (scale to the size) or "
                             f"\"crop\" (keep the aspect ratio, centre-crop), got {fit!r}")
    base = _root(root)
    if not base.is_dir():
        raise cvae.CVAEError(f"dataset 'image_folder': {base} is not a directory; data.options.root must name a "
                             f"folder with one subfolder of images per class (root/<class>/<image>.png)")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [(c, p) for i, c in enumerate(classes) for p in sorted((base / c).rglob("*"))
             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise cvae.CVAEError(f"dataset 'image_folder': no images ({', '.join(IMAGE_SUFFIXES)}) in subfolders of "
                             f"{base}; expected root/<class>/<image>.png")
    empty = sorted(set(classes) - {c for c, _ in files})
    if empty:
        raise cvae.CVAEError(f"dataset 'image_folder': class folder(s) {', '.join(empty)} under {base} hold no images "
                             f"({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder(s)")
    target_size: tuple[int, int] | None = None
    if size is not None:
        target_size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(target_size) != 2 or min(target_size) < 1:
            raise cvae.CVAEError(f"dataset 'image_folder': size must be an int or [height, width] >= 1, got {size!r}")
    images, labels = [], []
    for c, path in files:
        image = _read_image(path, grayscale)
        if target_size is None:
            target_size = tuple(image.shape[-2:])
        if tuple(image.shape[-2:]) != target_size:
            image = _fit_to(image, target_size, fit)
        images.append(image)
        labels.append(classes.index(c))
    pixels = torch.stack(images)
    labels_np = np.array(labels, dtype=np.int64)
    train_idx, test_idx = split_indices(labels_np, test_fraction, split_seed, "dataset 'image_folder'")
    info = {"label": cvae.ConditionInfo("label", (), len(classes), tuple(classes))}
    y = torch.from_numpy(labels_np)
    split = lambda idx, part: ByteImages(pixels[idx], {"label": y[idx]}, info, name=f"image_folder/{part}")  # noqa: E731
    return cvae.DataBundle("image_folder", byte_target(tuple(pixels.shape[1:])), info,
                           split(torch.from_numpy(train_idx), "train"), split(torch.from_numpy(test_idx), "test"))
