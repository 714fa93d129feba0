"""BigGAN-deep with registry layers: networks, conditional norm, EMA/standing stats, training, CLI."""
import copy
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from support import ROOT

pytest.importorskip("pytorch_lightning")
pytest.importorskip("torchvision")
import pytorch_lightning as pl  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import evonorm_plugins as ep  # noqa: E402
from evonorm_biggan import (  # noqa: E402
    ConditionalNormAct,
    Discriminator,
    Generator,
    count_parameters,
    truncated_z,
)
from evonorm_biggan.callbacks import SampleGrid  # noqa: E402
from evonorm_biggan.data import (  # noqa: E402
    BigGANDataModule,
    CIFAR10DataModule,
    ImageFolderDataModule,
)
from evonorm_biggan.ema import ema_update, standing_stats  # noqa: E402
from evonorm_biggan.model import sn_linear_no_bias  # noqa: E402
from evonorm_biggan.module import BigGANModule  # noqa: E402

CONFIGS = ROOT / "configs" / "biggan"
GENOME_LAYER = "BigGANTestGenomeB0"  # an "evolved" layer: EvoNorm-B0's genome run by GraphNormAct
TINY = dict(resolution=32, n_classes=4, g_ch=4, d_ch=4, depth=1, dim_z=8, shared_dim=8, g_attention=16, d_attention=16,
            standing_stats_batches=2, standing_stats_batch_size=4, sample_classes=2, sample_per_class=2)


@pytest.fixture(scope="module", autouse=True)
def _genome_layer():
    ep.register_layer(GENOME_LAYER, ep.paper_genome("EvoNormB0"))
    yield
    ep.registry.unregister_layer(GENOME_LAYER)


def _loader(n=8, classes=4, batch=4):
    data = TensorDataset(torch.rand(n, 3, 32, 32) * 2 - 1, torch.arange(n) % classes)
    return DataLoader(data, batch_size=batch, drop_last=True)


def _trainer(tmp_path, **kw):
    args = dict(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=str(tmp_path))
    return pl.Trainer(**{**args, **kw})


def _write_cifar(folder: Path, n=16):
    folder.mkdir(parents=True)
    batch = {"batch_label": "test", "labels": [i % 10 for i in range(n)],
             "data": np.random.randint(0, 256, (n, 3072), dtype=np.uint8)}
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump(batch, f)
    return folder


# -- networks -------------------------------------------------------------------------------------

def test_biggan_deep_128_parameter_counts():
    # BigGAN-PyTorch's BigGAN-deep 128 (launch_BigGAN_deep.sh; Brock et al. 2019: G 50.4M, D 34.6M),
    # counted without a forward (CPU time); test_convert_reference.py loads the reference's weights.
    assert count_parameters(Generator(128)) == 50_244_484
    assert count_parameters(Discriminator(128)) == 34_590_210


def test_output_conv_has_3_channels_or_the_tf_hub_128():
    narrow = dict(resolution=32, n_classes=4, ch=4, depth=1, dim_z=8, shared_dim=8, attention=None)
    G3, G128 = Generator(**narrow), Generator(**narrow, output_channels=128)
    assert (G3.out_conv.bias.shape, G128.out_conv.bias.shape) == ((3,), (128,))
    assert count_parameters(G128) - count_parameters(G3) == 125 * (16 * 9 + 1)  # 125 more rows of a 3×3 conv from 16
    with torch.no_grad():
        assert G128(torch.randn(2, 8), torch.tensor([0, 3])).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="output_channels must be at least 3"):
        Generator(**narrow, output_channels=2)


@pytest.mark.parametrize("resolution, final", [(128, 4), (64, 4), (32, 8)])
def test_discriminator_pools_the_reference_feature_size(resolution, final):
    # BigGAN-PyTorch's D_arch: every stage downsamples at 64 and 128; at 32 the last stage does not
    D = Discriminator(resolution, n_classes=10, ch=4, attention=None)
    with torch.no_grad():
        features = D.blocks(D.input_conv(torch.randn(1, 3, resolution, resolution)))
    assert features.shape[-2:] == (final, final)


def test_128_architecture_shapes_at_narrow_width():
    G, D = Generator(128, ch=8), Discriminator(128, ch=8)
    y = torch.tensor([0, 999])
    with torch.no_grad():
        images = G(torch.randn(2, 128), y)
        assert images.shape == (2, 3, 128, 128) and images.abs().max() <= 1
        assert D(images, y).shape == (2,)


def test_evonorm_b0_generator_adds_only_v():
    bn, b0 = Generator(32, 10, ch=4, depth=1, attention=16), Generator(32, 10, ch=4, depth=1, attention=16, layer="EvoNormB0")
    norms = [m for m in b0.modules() if isinstance(m, ep.EvoNormB0)]
    assert count_parameters(b0) - count_parameters(bn) == sum(m.v.numel() for m in norms)


@pytest.mark.parametrize("resolution,attention", [(32, 16), (64, 32)])
def test_resolutions_32_and_64(resolution, attention):
    G = Generator(resolution, 5, ch=8, depth=1, dim_z=8, shared_dim=8, attention=attention)
    D = Discriminator(resolution, 5, ch=8, depth=1, attention=attention)
    x = G(torch.randn(2, 8), torch.tensor([1, 4]))
    assert x.shape == (2, 3, resolution, resolution) and D(x, torch.tensor([1, 4])).shape == (2,)


def test_bad_resolution_and_attention_errors():
    with pytest.raises(ValueError, match="resolution 48 is not supported"):
        Generator(48)
    with pytest.raises(ValueError, match="attention resolution 64 .* stage resolutions"):
        Discriminator(64, attention=64)


def test_conditional_norm_replaces_the_layers_affine():
    cond = torch.randn(3, 6)
    # BN-ReLU: BigGAN's ReLU(BN(x)·(1 + W_g e) + W_b e); the layer keeps no γ, β of its own.
    layer = ConditionalNormAct("BatchNormReLU", 5, 6, sn_linear_no_bias)
    assert layer.norm.weight is None and layer.norm.bias is None
    x = torch.randn(3, 5, 4, 4)
    gain = 1 + layer.gain(cond).view(3, 5, 1, 1)
    expected = torch.relu(torch.nn.functional.batch_norm(x, None, None, training=True) * gain + layer.bias(cond).view(3, 5, 1, 1))
    torch.testing.assert_close(layer(x, cond), expected)
    # EvoNorm: the activation is inside the layer, the conditional affine is its last operation.
    layer = ConditionalNormAct("EvoNormS0", 5, 6, sn_linear_no_bias, {"groups": 5})
    reference = ep.EvoNormS0(5, groups=5)
    reference.v.data.copy_(layer.norm.v)
    expected = reference(x) * (1 + layer.gain(cond).view(3, 5, 1, 1)) + layer.bias(cond).view(3, 5, 1, 1)
    torch.testing.assert_close(layer(x, cond), expected)


def test_unknown_layer_name_is_a_clear_error():
    with pytest.raises(ep.UnknownLayerError, match="unknown layer 'EvoNormB9'.*did you mean"):
        BigGANModule(**{**TINY, "layer": "EvoNormB9"})


# -- EMA and running statistics -------------------------------------------------------------------

def test_ema_update_averages_parameters_and_keeps_running_stats():
    G = Generator(32, 4, ch=4, depth=1, attention=None, layer="EvoNormB0")
    ema = copy.deepcopy(G)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
        ema.blocks[0].norm1.norm.running_var.fill_(7.0)
    old = [p.clone() for p in ema.parameters()]
    ema_update(ema, G, decay=0.75)
    for e, o, g in zip(ema.parameters(), old, G.parameters()):
        torch.testing.assert_close(e, 0.75 * o + 0.25 * g)
    assert torch.all(ema.blocks[0].norm1.norm.running_var == 7.0)  # statistics are not averaged
    torch.testing.assert_close(ema.linear.parametrizations.weight[0]._u, G.linear.parametrizations.weight[0]._u)
    ema_update(ema, G, decay=0.0)
    assert all(torch.equal(e, g) for e, g in zip(ema.parameters(), G.parameters()))


@pytest.mark.parametrize("name", ["BatchNormReLU", "EvoNormB0", GENOME_LAYER])
def test_standing_stats_are_the_plain_average_over_batches(name):
    layer = ep.get_layer(name, 3)
    batches = [torch.randn(4, 3, 5, 5) * s + s for s in (1.0, 2.0, 3.0)]
    per_batch = []
    for x in batches:  # each batch's own statistic: momentum 1 replaces the estimate
        single = copy.deepcopy(layer).train()
        single.momentum = 1.0
        single(x)
        per_batch.append([b.clone() for n, b in single.named_buffers() if n != "num_batches_tracked"])
    it = iter(batches)
    layer.eval()
    standing_stats(layer, len(batches), lambda: layer(next(it)))
    assert not layer.training and layer.momentum == 0.1
    for got, *seen in zip([b for n, b in layer.named_buffers() if n != "num_batches_tracked"], *per_batch):
        torch.testing.assert_close(got, torch.stack(seen).mean(0))


def test_eval_sampling_uses_running_stats_of_the_ema_generator(tmp_path):
    module = BigGANModule(**{**TINY, "layer": "EvoNormB0"})
    module.refresh_ema_stats()
    running = module.G_ema.blocks[0].norm1.norm.running_var
    assert not torch.allclose(running, torch.ones_like(running))  # re-estimated from G_ema's outputs
    z, y = truncated_z(4, 8, 0.5), torch.tensor([0, 1, 2, 3])
    batch = module.sample(4, y, z=z)
    alone = module.sample(1, y[:1], z=z[:1])  # eval mode: independent of the rest of the batch
    torch.testing.assert_close(alone, batch[:1])
    assert not module.G_ema.training


def test_truncated_sampling():
    z = truncated_z(1000, 16, 0.4)
    assert z.abs().max() <= 0.4 and z.std() > 0.15
    module = BigGANModule(**TINY)
    images = module.sample(3, truncation=0.3)
    assert images.shape == (3, 3, 32, 32) and images.abs().max() <= 1
    with pytest.raises(ValueError, match="truncation must be positive"):
        module.sample(2, truncation=0.0)


# -- training ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(set(ep.list_layers()) | {GENOME_LAYER}))
def test_one_manual_optimization_step_with_each_layer(name, tmp_path):
    module = BigGANModule(**{**TINY, "layer": name, "d_steps": 2, "accumulate": 1, "ema_start": 0, "ema_decay": 0.5})
    before_g = [p.clone() for p in module.G.parameters()]
    before_d = [p.clone() for p in module.D.parameters()]
    before_ema = [p.clone() for p in module.G_ema.parameters()]
    _trainer(tmp_path, limit_train_batches=1).fit(module, _loader(n=8, batch=8))
    assert int(module.g_steps) == 1
    assert any(not torch.equal(a, b) for a, b in zip(before_g, module.G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_d, module.D.parameters()))
    for e, old, g in zip(module.G_ema.parameters(), before_ema, module.G.parameters()):
        torch.testing.assert_close(e, 0.5 * old + 0.5 * g)


def test_gradient_accumulation_and_batch_split_error(tmp_path):
    module = BigGANModule(**{**TINY, "d_steps": 1, "accumulate": 2})
    _trainer(tmp_path, limit_train_batches=1).fit(module, _loader(n=8, batch=4))
    assert int(module.g_steps) == 1
    module = BigGANModule(**{**TINY, "d_steps": 3, "accumulate": 1})
    with pytest.raises(ValueError, match="multiple of 3"):
        _trainer(tmp_path, limit_train_batches=1).fit(module, _loader(n=8, batch=4))


def test_checkpoint_round_trip_and_resume(tmp_path):
    module = BigGANModule(**{**TINY, "layer": "EvoNormB0", "ema_start": 0, "ema_decay": 0.9})
    trainer = _trainer(tmp_path, limit_train_batches=2)
    trainer.fit(module, _loader())
    module.refresh_ema_stats()
    path = tmp_path / "biggan.ckpt"
    trainer.save_checkpoint(path)
    loaded = BigGANModule.load_from_checkpoint(path)
    assert loaded.hparams.layer == "EvoNormB0"
    assert module.state_dict().keys() == loaded.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), loaded.state_dict().values()))
    torch.testing.assert_close(loaded.sample(4, loaded.fixed_y[:4], z=loaded.fixed_z[:4]), module.sample(4, module.fixed_y[:4], z=module.fixed_z[:4]))
    resumed = BigGANModule(**{**TINY, "layer": "EvoNormB0", "ema_start": 0, "ema_decay": 0.9})
    _trainer(tmp_path, limit_train_batches=2, max_epochs=2).fit(resumed, _loader(), ckpt_path=str(path))
    assert int(resumed.g_steps) == 4


def test_sample_grid_callback_writes_the_untrained_and_every_nth_grid(tmp_path):
    module = BigGANModule(**TINY)
    _trainer(tmp_path, limit_train_batches=3, callbacks=[SampleGrid(every_n_steps=2)]).fit(module, _loader(n=12))
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["step_0000000.png", "step_0000002.png"]
    grid = module.sample_grid()  # 2 classes × 2 samples of 32×32, tiled with make_grid's 2-pixel padding
    assert grid.shape == (3, 2 + 2 * 34, 2 + 2 * 34) and 0 <= grid.min() and grid.max() <= 1


# -- data, metrics and CLI ------------------------------------------------------------------------

def test_cifar10_data_module(tmp_path):
    dm = CIFAR10DataModule(str(_write_cifar(tmp_path / "cifar-10-batches-py")), batch_size=4, num_workers=0)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.min() >= -1 and x.max() <= 1 and y.dtype == torch.long
    CIFAR10DataModule(str(tmp_path)).setup("fit")  # the parent folder works too


def test_image_folder_data_module(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(np.random.randint(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    dm = ImageFolderDataModule(str(tmp_path), resolution=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and dm.num_classes == 2 and x.min() >= -1 and x.max() <= 1


def test_missing_dataset_paths_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 python batches at .*nowhere.*data_batch_1"):
        CIFAR10DataModule(str(tmp_path / "nowhere")).setup("fit")
    with pytest.raises(FileNotFoundError, match="no image folder at .*nowhere.*root/<class>"):
        ImageFolderDataModule(str(tmp_path / "nowhere")).setup("fit")


def test_missing_inception_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Inception weights not found at .*missing.pth.*pt_inception-2015-12-05"):
        BigGANModule(**{**TINY, "inception_weights": str(tmp_path / "missing.pth")})


class _RecordingMetrics:
    """Stands in for InceptionMetrics (tests/evonorm_biggan/test_metrics.py tests the scores)."""

    def to(self, device):
        return self

    def update_real(self, images):
        pass

    def update_fake(self, images):
        pass

    def compute(self):
        return {"fid": torch.tensor(3.0), "is_mean": torch.tensor(2.0), "is_std": torch.tensor(0.5)}


@pytest.mark.parametrize("eval_truncation, suffix", [(None, ""), (0.5, "_trunc0.5")])
def test_evaluation_samples_untruncated_z_unless_told_and_names_a_truncation(eval_truncation, suffix, tmp_path):
    module = BigGANModule(**{**TINY, "eval_truncation": eval_truncation})
    module._metrics = _RecordingMetrics()
    drawn, random_z = [], module.random_z
    module.random_z = lambda n, truncation=None: drawn.append(truncation) or random_z(n, truncation)
    trainer = _trainer(tmp_path, limit_val_batches=1)
    trainer.validate(module, _loader(n=4))
    assert drawn and set(drawn) == {eval_truncation}  # standing statistics and samples alike
    assert {f"eval/{k}{suffix}" for k in ("fid", "is_mean", "is_std")} <= set(trainer.callback_metrics)


@pytest.mark.slow
def test_cli_fit_with_the_smoke_config(tmp_path):
    from evonorm_biggan.cli import main

    root = _write_cifar(tmp_path / "cifar")
    main(["fit", "--config", str(CONFIGS / "smoke.yaml"), "--data.init_args.root", str(root),
          "--trainer.default_root_dir", str(tmp_path / "run")])
    assert (tmp_path / "run" / "samples" / "step_0000002.png").is_file()
    assert list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))


@pytest.mark.slow
def test_a_fit_killed_with_sigkill_resumes_from_last_with_its_whole_state(tmp_path):
    """`--ckpt_path last` finds the run's last checkpoint (not a new logger version's empty folder) and
    restores the step count, G, D, G_ema, both optimizers and the fixed latents; a model setting given
    differently from the checkpoint's is named in a warning."""
    import signal
    import time
    import warnings

    from evonorm_biggan.cli import main

    root, run = _write_cifar(tmp_path / "cifar", n=32), tmp_path / "run"
    args = ["fit", "--config", str(CONFIGS / "smoke.yaml"), "--data.init_args.root", str(root),
            "--trainer.default_root_dir", str(run), "--trainer.limit_train_batches", "4",
            "--checkpoint.every_n_train_steps", "3", "--sample_grid.every_n_steps", "0", "--trainer.max_epochs", "1000"]
    script = f"from evonorm_biggan.cli import main; main({args!r})"  # max_steps bounds the resumed fits below
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and process.poll() is None:
            try:
                if torch.load(last, weights_only=True, map_location="cpu")["global_step"] >= 9:
                    break
            except (FileNotFoundError, RuntimeError, EOFError, KeyError):  # not written yet, or mid-write
                pass
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    saved = torch.load(last, weights_only=True, map_location="cpu")
    step = saved["global_step"]
    assert step >= 9 and step % 3 == 0  # 2 D steps + 1 G step per iteration

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = main([*args, "--ckpt_path", "last", "--trainer.max_steps", str(step), "--model.g_ch", "8"])
    assert any("the checkpoint's model settings replace the configured ones: g_ch=4 (configured 8)" in str(w.message)
               for w in caught)
    model = cli.model
    assert cli.trainer.global_step == step and int(model.g_steps) == step // 3
    for key, value in saved["state_dict"].items():  # G, D, G_ema, the step counter and the fixed latents
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    for optimizer, state in zip(cli.trainer.optimizers, saved["optimizer_states"]):
        restored = optimizer.state_dict()["state"]
        assert restored.keys() == state["state"].keys()
        for index in state["state"]:
            for name, value in state["state"][index].items():
                torch.testing.assert_close(restored[index][name], value, rtol=0, atol=0)

    cli = main([*args, "--ckpt_path", "last", "--trainer.max_steps", str(step + 3)])  # and training goes on
    assert cli.trainer.global_step == step + 3 and int(cli.model.g_steps) == step // 3 + 1


def test_cli_links_resolution_and_classes_from_the_data(tmp_path):
    """model.resolution and model.n_classes come from the data module; setting them is refused."""
    from evonorm_biggan.cli import main

    root = _write_cifar(tmp_path / "cifar")
    base = ["--config", str(CONFIGS / "smoke.yaml"), "--data.init_args.root", str(root)]
    with pytest.raises(SystemExit):
        main(["fit", *base, "--model.n_classes", "7"])
    from evonorm_biggan.cli import BigGANCLI

    cli = BigGANCLI(BigGANModule, BigGANDataModule, subclass_mode_data=True, run=False,
                    args=[*base, "--trainer.default_root_dir", str(tmp_path / "run")])
    assert (cli.model.hparams.n_classes, cli.model.hparams.resolution) == (10, 32)
    assert cli.trainer.checkpoint_callback.dirpath == str(tmp_path / "run" / "checkpoints")
    (tmp_path / "cls_a").mkdir(), (tmp_path / "cls_b").mkdir(), (tmp_path / "cls_c").mkdir()
    folder = ImageFolderDataModule(str(tmp_path), resolution=64)
    assert (folder.num_classes, folder.resolution) == (4, 64)  # cifar/ counts as a class folder here
    cifar = CIFAR10DataModule(str(root))
    assert (cifar.num_classes, cifar.resolution) == (10, 32)


def test_the_command_reports_a_missing_dataset_in_one_line(tmp_path, capsys):
    from evonorm_biggan.cli import command

    args = ["fit", "--config", str(CONFIGS / "smoke.yaml"), "--data.init_args.root", str(tmp_path / "nowhere"),
            "--trainer.default_root_dir", str(tmp_path / "run")]
    assert command(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("evonorm-biggan: error: no CIFAR-10 python batches at") and "--debug" in err[-1]
    with pytest.raises(FileNotFoundError):
        command([*args, "--debug"])


def test_configs_parse_and_the_pair_differs_only_in_layer():
    import yaml

    for pair in ("imagenet128", "cifar10"):
        bn = yaml.safe_load((CONFIGS / f"{pair}_bn_relu.yaml").read_text())
        b0 = yaml.safe_load((CONFIGS / f"{pair}_evonorm_b0.yaml").read_text())
        assert (bn["model"].pop("layer"), b0["model"].pop("layer")) == ("BatchNormReLU", "EvoNormB0")
        bn["trainer"].pop("default_root_dir"), b0["trainer"].pop("default_root_dir")
        assert bn == b0
    model = yaml.safe_load((CONFIGS / "imagenet128_evonorm_b0.yaml").read_text())["model"]
    # BigGAN-PyTorch's launch_BigGAN_deep.sh: 1 D step of 8 accumulated micro-batches of 256 per G step
    assert (model["g_ch"], model["depth"], model["g_lr"], model["d_lr"], model["betas"]) == (128, 2, 1e-4, 4e-4, [0.0, 0.999])
    assert (model["d_steps"], model["accumulate"], model["output_channels"], model["eval_truncation"]) == (1, 8, 3, None)
    assert yaml.safe_load((CONFIGS / "imagenet128_bn_relu.yaml").read_text())["data"]["init_args"]["batch_size"] == 1 * 8 * 256


@pytest.mark.slow
def test_biggan_package_does_not_import_lightning():
    code = "import sys, evonorm_biggan; print([m for m in ('pytorch_lightning', 'lightning', 'torchvision') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
