"""TorchScript of every layer and configuration; ONNX export in eval mode checked with onnxruntime."""
import numpy as np
import pytest
import torch

from support import ALL_LAYERS, randomize_parameters

CONFIGS = [dict(), dict(apply_act=False), dict(affine_only=True)]


@pytest.mark.parametrize("name", list(ALL_LAYERS))
@pytest.mark.parametrize("config", CONFIGS, ids=["act", "no_act", "affine_only"])
def test_torchscript(name, config):
    layer = ALL_LAYERS[name](12, groups=4, **config)
    randomize_parameters(layer)
    scripted = torch.jit.script(ALL_LAYERS[name](12, groups=4, **config))
    scripted.load_state_dict(layer.state_dict())
    x = torch.randn(3, 12, 5, 5)
    torch.testing.assert_close(scripted(x), layer(x))  # training: both update their running variance
    if name.startswith("B") and "affine_only" not in config:
        torch.testing.assert_close(scripted.running_var, layer.running_var)
    torch.testing.assert_close(scripted.eval()(x), layer.eval()(x))
    with pytest.raises(torch.jit.Error, match="build the layer with num_features=6"):
        scripted(torch.randn(1, 6, 2, 2))


def _export_and_run(layer, x, path, **export_kwargs):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    torch.onnx.export(layer, (x,), str(path), input_names=["x"], output_names=["y"], **export_kwargs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()})[0]


@pytest.mark.parametrize("name", list(ALL_LAYERS))
@pytest.mark.parametrize("config", CONFIGS[:2], ids=["act", "no_act"])
def test_onnx_matches_pytorch(name, config, tmp_path):
    """torch's default exporter (torch.export-based since PyTorch 2.9)."""
    layer = ALL_LAYERS[name](12, groups=4, **config)
    randomize_parameters(layer)
    layer.eval()
    x = torch.randn(2, 12, 6, 5) * 2
    y = _export_and_run(layer, x, tmp_path / "layer.onnx")
    np.testing.assert_allclose(y, layer(x).detach().numpy(), rtol=1e-5, atol=1e-5)


# The legacy exporter warns that the channel-count and empty-input checks read traced sizes: both are
# constants of an exported graph, so the warning is expected; the exporter itself is deprecated.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["B0", "S0"])
def test_onnx_legacy_torchscript_exporter(name, tmp_path):
    layer = ALL_LAYERS[name](16, groups=8)
    randomize_parameters(layer)
    layer.eval()
    x = torch.randn(2, 16, 4, 4)
    y = _export_and_run(layer, x, tmp_path / "layer.onnx", dynamo=False)
    np.testing.assert_allclose(y, layer(x).detach().numpy(), rtol=1e-5, atol=1e-5)
