"""BigGAN on many processes: Lightning's plain ``ddp`` strategy with two gloo CPU processes (no
unused-parameter error, equal weights, per-process fake batches, shared grid latents), the model's
``sync_stats`` flag, and ``sync_batchnorm`` that keeps BatchNormReLU's ReLU (:mod:`evonorm_biggan.distributed`)."""
import os
import tempfile
from typing import Any, Dict, List

import pytest
import torch
import torch.distributed as dist
from torch import nn

pytest.importorskip("pytorch_lightning")
pytest.importorskip("torchvision")
import pytorch_lightning as pl  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import evonorm_plugins as ep  # noqa: E402
from evonorm_biggan.callbacks import SampleGrid  # noqa: E402
from evonorm_biggan.distributed import SyncBatchStatistics, check_activations_kept  # noqa: E402
from evonorm_biggan.module import BigGANModule  # noqa: E402

from process_group import run_in_process_group  # noqa: E402

TINY = dict(resolution=32, n_classes=4, g_ch=4, d_ch=4, depth=1, dim_z=8, shared_dim=8, g_attention=16, d_attention=16,
            standing_stats_batches=2, standing_stats_batch_size=4, sample_classes=2, sample_per_class=2,
            d_steps=2, accumulate=1, ema_start=0, ema_decay=0.5)


class RecordingModule(BigGANModule):
    """Keeps every z it draws, and what G's output layer is while it trains."""

    def random_z(self, n, truncation=None):
        z = super().random_z(n, truncation)
        self.__dict__.setdefault("drawn", []).append(z)
        return z

    def on_train_batch_start(self, batch, batch_idx):
        norm = self.G.out_norm
        self.__dict__["training_out_norm"] = (type(norm).__name__, getattr(norm, "sync_stats", None), type(getattr(norm, "act", None)).__name__)


def _same_on_every_process(t: torch.Tensor) -> bool:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return all(torch.equal(parts[0], p) for p in parts[1:])


def _fit(module: BigGANModule, folder: str, **trainer_kwargs: Any) -> None:
    data = TensorDataset(torch.rand(16, 3, 32, 32) * 2 - 1, torch.arange(16) % 4)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=6, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder, **trainer_kwargs)
    trainer.fit(module, DataLoader(data, batch_size=4))


def two_fits(rank: int, world_size: int) -> Dict[str, Any]:
    """Each process of a group of two: the environment of an externally started DDP process (as under
    torchrun), then a BN-ReLU fit with sync_batchnorm and an EvoNorm-B0 fit with the sync_stats flag."""
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    results: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = [folder]
        dist.broadcast_object_list(folder)  # one run directory for the group, as one launcher gives
        pl.seed_everything(0)
        module = RecordingModule(**TINY, layer="BatchNormReLU")
        _fit(module, folder[0], sync_batchnorm=True, plugins=[SyncBatchStatistics()], callbacks=[SampleGrid(every_n_steps=1)])
        results["bn: G steps"] = int(module.g_steps)
        results["bn: weights equal"] = _same_on_every_process(torch.cat([p.detach().flatten() for p in module.parameters()]))
        results["bn: grid latents equal"] = _same_on_every_process(module.fixed_z)
        results["bn: fake z differ"] = not _same_on_every_process(module.drawn[0])
        results["bn: out_norm while training"] = module.training_out_norm
        results["bn: out_norm after"] = module.G.out_norm.sync_stats
        results["bn: grids"] = sorted(os.listdir(os.path.join(folder[0], "samples")))
        dist.barrier()

        pl.seed_everything(0)
        module = RecordingModule(**TINY, layer="EvoNormB0", sync_stats=True)
        _fit(module, folder[0])
        layers = [m for m in module.modules() if isinstance(m, ep.EvoNormB0)]
        results["b0: G steps"] = int(module.g_steps)
        results["b0: synchronized layers"] = (len(layers), sum(m.sync_stats for m in layers))
        results["b0: weights and statistics equal"] = _same_on_every_process(
            torch.cat([t.detach().flatten() for t in module.state_dict().values() if t.is_floating_point()]))
        results["b0: fake z differ"] = not _same_on_every_process(module.drawn[0])
    return results


@pytest.mark.slow
def test_ddp_fits_with_two_cpu_processes():
    results: List[Dict[str, Any]] = run_in_process_group(two_fits, world_size=2)
    for rank, got in enumerate(results):
        assert got["bn: G steps"] == 2 and got["b0: G steps"] == 2, rank
        assert got["bn: weights equal"] and got["b0: weights and statistics equal"], rank
        assert got["bn: grid latents equal"], rank
        assert got["bn: fake z differ"] and got["b0: fake z differ"], rank
        assert got["bn: out_norm while training"] == ("BatchNormReLU", True, "ReLU"), rank
        assert got["bn: out_norm after"] is False, rank  # reverted at the end of the fit
        assert got["bn: grids"] == ["step_0000000.png", "step_0000001.png", "step_0000002.png"], rank
        count, synchronized = got["b0: synchronized layers"]
        assert count > 0 and synchronized == count, rank  # G's and G_ema's


def test_sync_batch_statistics_keeps_activations_and_reverts():
    module = BigGANModule(**TINY, layer="BatchNormReLU")
    module.extra = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))  # a plain BatchNorm is converted as torch does
    plugin = SyncBatchStatistics()
    plugin.apply(module)
    norms = [m for m in module.modules() if isinstance(m, ep.BatchNormReLU)]
    assert norms and all(m.sync_stats for m in norms) and isinstance(module.G.out_norm.act, nn.ReLU)
    assert type(module.extra[1]) is nn.SyncBatchNorm
    check_activations_kept(module)
    plugin.revert(module)
    assert not any(m.sync_stats for m in norms) and not isinstance(module.extra[1], nn.SyncBatchNorm)


def test_lightnings_own_conversion_is_caught():
    module = nn.SyncBatchNorm.convert_sync_batchnorm(BigGANModule(**TINY, layer="BatchNormReLU"))
    with pytest.raises(RuntimeError, match=r"bare SyncBatchNorm, which skips their activation \(G.out_norm, G_ema.out_norm\).*SyncBatchStatistics"):
        check_activations_kept(module)


def test_the_cli_passes_the_layer_sync_with_sync_batchnorm(tmp_path):
    from evonorm_biggan.cli import BigGANCLI
    from evonorm_biggan.data import BigGANDataModule

    args = ["--data", "evonorm_biggan.data.CIFAR10DataModule", "--data.root", str(tmp_path), "--trainer.logger", "false",
            "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path)]
    for flag, expected in (("true", SyncBatchStatistics), ("false", type(None))):
        cli = BigGANCLI(BigGANModule, BigGANDataModule, subclass_mode_data=True, run=False,
                        args=[*args, "--trainer.sync_batchnorm", flag])
        assert type(cli.trainer._accelerator_connector._layer_sync) is expected


def test_each_process_draws_its_own_noise_from_the_global_seed(monkeypatch):
    pl.seed_everything(3)
    module = BigGANModule(**TINY)
    z, y = module.random_z(4), module.random_labels(64)
    module.__dict__.pop("_noise_generator")  # as at the start of a fit: made again from the seed and the rank
    torch.testing.assert_close((module.random_z(4), module.random_labels(64)), (z, y))
    module.__dict__.pop("_noise_generator")
    monkeypatch.setattr(BigGANModule, "global_rank", property(lambda self: 1))
    assert not torch.equal(module.random_z(4), z) and not torch.equal(module.random_labels(64), y)
