"""Image datasets, image-completion conditioning, and image pictures for cvae.

- datasets: "shapes" (procedural 64x64 RGB shapes, offline), "mnist", "fashion_mnist", "cifar10",
  "celeba" (torchvision downloads, off by default), "image_folder" (class = subfolder), and
  "completion", which wraps any image dataset for structured output prediction (Sohn et al. 2015);
- condition encoders "image": an image condition (the visible part) -> a feature vector, and
  "image_map": the same -> feature maps of its size, for the fully-convolutional architecture 'fcn';
- commands: `cvae compare` (priors side by side, plus the deterministic baseline) and `cvae pictures`;
- after training on one of these datasets, interpolations.png and completions.png in the run directory.
"""

from __future__ import annotations

import cvae

from .baseline import Deterministic, deterministic_nll, train_deterministic
from .commands import CompareCommand, PicturesCommand
from .completion import MASKS, ImageConditionEncoder, compose, load_completion, make_mask
from .condition_maps import ImageMapEncoder
from .data import ByteImages
from .pictures import save_conditional_completions, save_image_pictures
from .shapes import SHAPE_NAMES, load_shapes
from .sources import load_celeba, load_cifar10, load_fashion_mnist, load_image_folder, load_mnist

__all__ = ["ByteImages", "Deterministic", "ImageConditionEncoder", "ImageMapEncoder", "MASKS", "SHAPE_NAMES",
           "compose", "deterministic_nll", "load_celeba", "load_cifar10", "load_completion", "load_fashion_mnist",
           "load_image_folder", "load_mnist", "load_shapes", "make_mask", "save_conditional_completions",
           "save_image_pictures", "train_deterministic", "cvae_datasets", "cvae_conditions", "cvae_commands",
           "cvae_fit_end"]

DATASETS = ("shapes", "mnist", "fashion_mnist", "cifar10", "celeba", "image_folder", "completion")


@cvae.hookimpl
def cvae_datasets() -> list[cvae.DatasetSpec]:
    return [
        cvae.DatasetSpec("shapes", load_shapes, "procedural RGB shapes (6 classes), 3x64x64, 8 bits, offline; "
                         "options n_train, n_test, size, seed"),
        cvae.DatasetSpec("mnist", load_mnist, "MNIST digits 1x28x28 via torchvision (root, download)"),
        cvae.DatasetSpec("fashion_mnist", load_fashion_mnist, "Fashion-MNIST 1x28x28 via torchvision (root, download)"),
        cvae.DatasetSpec("cifar10", load_cifar10, "CIFAR-10 3x32x32 via torchvision (root, download)"),
        cvae.DatasetSpec("celeba", load_celeba, "CelebA faces, cropped and resized, 40 attributes as a vector "
                         "condition (root, download, size, attributes)"),
        cvae.DatasetSpec("image_folder", load_image_folder, "any folder of images, class = subfolder (root, size)"),
        cvae.DatasetSpec("completion", load_completion, "image completion: condition 'visible' (part of an image "
                         "and its mask), target the hidden pixels (dataset, mask, target)"),
    ]


@cvae.hookimpl
def cvae_conditions() -> list[cvae.ConditionSpec]:
    return [cvae.ConditionSpec("image", ImageConditionEncoder, "an image condition through strided convolutions "
                               "to a vector (channels, dim)"),
            cvae.ConditionSpec("image_map", ImageMapEncoder, "an image condition through 3x3 convolutions to feature "
                               "maps of its size, for architecture 'fcn' (channels, dim)")]


@cvae.hookimpl
def cvae_commands() -> list[cvae.CommandSpec]:
    return [
        cvae.CommandSpec("compare", CompareCommand, "train one config with each prior and print a table"),
        cvae.CommandSpec("pictures", PicturesCommand, "interpolations and completions of an image run"),
    ]


@cvae.hookimpl
def cvae_fit_end(trainer, metrics):
    """Runs on this plugin's datasets also get interpolations.png and completions.png."""
    main = getattr(trainer, "dist", None) is None or trainer.dist.is_main  # rank 0 alone writes files
    if trainer.config["data"]["name"] in DATASETS and main:
        save_image_pictures(trainer.model, trainer.data, trainer.run_dir, mode=trainer.config["eval"]["sample_mode"],
                            seed=trainer.config["seed"])
