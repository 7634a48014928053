"""Data sets held in memory as uint8 tensors, and batched, seeded augmentation on whole batches."""

from .dataset import ArrayDataset, train_val_split
from .cifar import embedded_cifar10, read_cifar_binary
from .loader import BatchLoader

__all__ = ["ArrayDataset", "BatchLoader", "embedded_cifar10", "read_cifar_binary", "train_val_split"]
