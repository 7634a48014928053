"""Data sets held in memory as uint8 tensors, and batched, seeded augmentation on whole batches.

:func:`load_data` and :func:`load_train_val` open every supported source: the embedded CIFAR-10 subset,
CIFAR-10/100 in either official format (folder or ``.tar.gz``, downloaded on request) and image folders.
"""

from .cifar import CIFAR_MD5, embedded_cifar10, load_cifar, read_cifar_binary
from .dataset import ArrayDataset, resize_dataset, train_val_split
from .download import download_cifar
from .imagefolder import load_image_folder
from .images import DEFAULT_MAX_PIXELS, open_image, resize_cover_crop
from .loader import BatchLoader, check_batch_size
from .sources import load_data, load_train_val

__all__ = [
    "CIFAR_MD5", "DEFAULT_MAX_PIXELS", "ArrayDataset", "BatchLoader", "check_batch_size", "download_cifar",
    "embedded_cifar10", "load_cifar", "load_data", "load_image_folder", "load_train_val", "open_image",
    "read_cifar_binary", "resize_cover_crop", "resize_dataset", "train_val_split",
]
