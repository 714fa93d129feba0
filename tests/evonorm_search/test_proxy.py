"""Proxy task: CIFAR-10 python batches, synthetic data, the three architectures with a candidate layer,
and a short Lightning training run."""
import pickle

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_lightning")
pytest.importorskip("timm")

import evonorm_plugins as ep  # noqa: E402
from evonorm_plugins.datasets import read_cifar10_batches  # noqa: E402
from evonorm_plugins.graph import GraphNormAct  # noqa: E402
from evonorm_plugins.registry import make_layer_class, paper_genome  # noqa: E402
from evonorm_search.proxy import (  # noqa: E402
    ArchitectureConfig,
    CIFAR10DataModule,
    synthetic_cifar,
    train_and_validate,
)

SMALL = {
    "resnet50v2": ArchitectureConfig("resnet50v2", 0.125, (1, 1, 1, 1)),
    "mobilenetv2": ArchitectureConfig("mobilenetv2", 0.25),
    "efficientnet_b0": ArchitectureConfig("efficientnet_b0", 0.25, (0.34,)),
}


def write_cifar_batches(folder, counts, seed=0):
    """CIFAR-10's python format: protocol-2 pickles with bytes keys, data uint8 [n, 3072]."""
    rng = np.random.default_rng(seed)
    for i, n in enumerate(counts, start=1):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        with (folder / f"data_batch_{i}").open("wb") as f:
            pickle.dump(batch, f, protocol=2)


def test_cifar_batches_load_and_split(tmp_path):
    write_cifar_batches(tmp_path, [30, 20])
    images, labels = read_cifar10_batches(tmp_path)
    assert images.shape == (50, 3, 32, 32) and images.dtype == np.uint8 and labels.shape == (50,)
    assert read_cifar10_batches(tmp_path, limit=7)[0].shape[0] == 7
    data = CIFAR10DataModule(str(tmp_path), batch_size=8, val_fraction=0.2)
    data.setup()
    assert len(data.train_set) == 40 and len(data.val_set) == 10
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and abs(float(x.mean())) < 1.0


def test_str_keyed_batches_and_malformed_files(tmp_path):
    rng = np.random.default_rng(0)
    with (tmp_path / "data_batch_1").open("wb") as f:  # a re-saved copy: str keys
        pickle.dump({"data": rng.integers(0, 256, (5, 3072), dtype=np.uint8), "labels": [1, 2, 3, 4, 5]}, f, protocol=2)
    assert read_cifar10_batches(tmp_path)[1].tolist() == [1, 2, 3, 4, 5]
    with (tmp_path / "data_batch_2").open("wb") as f:
        pickle.dump({"images": []}, f)
    with pytest.raises(ValueError, match=r"data_batch_2 is not a CIFAR-10 python batch: it has no 'data' and 'labels'"):
        read_cifar10_batches(tmp_path)


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no CIFAR-10 python batches at .*nowhere.* point the data path \(data_dir, data.root\) at the cifar-10-batches-py"):
        read_cifar10_batches(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        CIFAR10DataModule(None, val_fraction=1.0)


def test_synthetic_data_is_deterministic():
    a, b = synthetic_cifar(20, seed=3), synthetic_cifar(20, seed=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("arch", list(SMALL))
@pytest.mark.parametrize("layer", ["BatchNormReLU", "EvoNormS0", "evolved"])
def test_architectures_use_the_candidate_everywhere(arch, layer):
    cls = make_layer_class("Candidate", paper_genome("EvoNormB2")) if layer == "evolved" else ep.get_layer_class(layer)
    model = SMALL[arch].build(cls)
    norms = [m for m in model.modules() if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, ep.EvoNormBase))]
    assert norms and all(isinstance(m, cls) for m in norms)
    # no activation module left outside squeeze-excite gates: the candidate is the activation
    activations = [n for n, m in model.named_modules() if isinstance(m, (nn.ReLU, nn.SiLU, nn.ReLU6)) and ".se." not in n]
    assert not activations or layer == "BatchNormReLU"
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    if layer == "evolved":
        assert all(isinstance(m, GraphNormAct) for m in norms)


def test_unknown_architecture():
    with pytest.raises(ValueError, match=r"unknown proxy architecture 'vgg'; choose from resnet50v2, mobilenetv2, efficientnet_b0"):
        ArchitectureConfig("vgg").build(ep.BatchNormReLU)


def test_short_training_learns_the_synthetic_task():
    data = CIFAR10DataModule(None, batch_size=32, limit=600, seed=0)
    accuracy, nonfinite = train_and_validate(SMALL["resnet50v2"].build(ep.BatchNormReLU), data, steps=30, lr=0.05, seed=0)
    assert not nonfinite and accuracy > 0.3  # chance is 0.1
