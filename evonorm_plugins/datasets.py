"""Reading CIFAR-10's python batches: one reader for every part of the project that trains on them."""
import pickle
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np


def read_cifar10_batches(root: Union[str, Path], limit: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and int64 labels from the ``data_batch_*`` files in ``root`` or in
    its ``cifar-10-batches-py/`` subfolder (the official archive's layout); any subset of the files is
    used as found, and ``limit`` keeps the first images."""
    root = Path(root)
    files = []
    for folder in (root, root / "cifar-10-batches-py"):
        files = sorted(folder.glob("data_batch_*"))
        if files:
            break
    if not files:
        raise FileNotFoundError(
            f"no CIFAR-10 python batches at {str(root)!r}: expected data_batch_1 … data_batch_5 in it or in its "
            f"cifar-10-batches-py/ subfolder; get the python version, cifar-10-python.tar.gz, from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html, extract it and point the data path (data_dir, data.root) "
            f"at its cifar-10-batches-py folder"
        )
    images, labels = [], []
    for file in files:
        with file.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
        # The original files, written by Python 2, have bytes keys; re-saved copies often have str keys.
        batch = {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}
        if "data" not in batch or "labels" not in batch:
            raise ValueError(f"{file} is not a CIFAR-10 python batch: it has no 'data' and 'labels' (keys: {sorted(batch)})")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    x, y = np.concatenate(images), np.concatenate(labels)
    return (x[:limit], y[:limit]) if limit else (x, y)
