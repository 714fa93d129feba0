"""IS/FID: the project's metric code against torch-fidelity's own computation, same network and images.

The real Inception weights are not available to the tests, so both use one random-weight Inception-v3
saved as a local weights file (scaled so that its scores are far from degenerate). Both resize inside
that network (torch-fidelity's TF-1.x bilinear resize): to 299×299, or to 96×96 through the class
constant both read, to keep CPU time down. FID with the standard 2048 features costs an eigenvalue
problem of size 2048 per computation (5–30 s on a small CPU): the default suite compares FID on the
64-d features, the slow suite on the 2048-d ones at 299×299."""
from unittest import mock

import pytest
import torch

pytest.importorskip("torchmetrics")
torch_fidelity = pytest.importorskip("torch_fidelity")
from torch_fidelity import feature_extractor_inceptionv3 as fe  # noqa: E402

from evonorm_biggan.metrics import InceptionMetrics, to_uint8  # noqa: E402

SMALL = 96  # the Inception input size of the fast comparison


class _Images(torch.utils.data.Dataset):
    """uint8 images one by one, as torch-fidelity reads a dataset."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def _save_random_inception(path, size):
    torch.manual_seed(0)
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for m in net.modules():  # variance-preserving, so ~100 layers neither vanish nor explode
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    # Random features differ little between images around a large common part: logits orthogonal to that
    # part (at the input size used) and scaled up make an Inception Score of about 2, not 1.
    probe = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with mock.patch.object(fe.FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", size), torch.no_grad():
        common = torch.nn.functional.normalize(net(probe)[0].mean(0), dim=0)
        weight = torch.randn(1008, 2048) * 10.0
        net.fc.weight.copy_(weight - torch.outer(weight @ common, common))
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    return _save_random_inception(tmp_path_factory.mktemp("inception") / "random_inception.pth", SMALL)


def test_uint8_conversion_rounds_and_gives_real_images_back():
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert torch.equal(to_uint8(levels.float() / 127.5 - 1), levels)  # as the data modules scale them
    assert to_uint8(torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.999, 1.0, 2.0])).tolist() == [0, 0, 0, 128, 255, 255, 255]


def test_the_network_is_torch_fidelitys_at_299(random_inception):
    metrics = InceptionMetrics(random_inception)
    assert type(metrics.inception) is fe.FeatureExtractorInceptionV3 and metrics.inception.INPUT_IMAGE_SIZE == 299
    assert metrics.inception.features_list == ["2048", "logits_unbiased"]  # torch-fidelity's FID and IS features


def _compare_with_torch_fidelity(weights, fid_features, n=10):
    g = torch.Generator().manual_seed(1)
    real = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    fake = torch.rand(n, 3, 32, 32, generator=g) ** 2 * 2 - 1  # generated images in [-1, 1], a different distribution
    metrics = InceptionMetrics(weights, is_splits=2, fid_features=fid_features)
    for chunk in real.split(4):  # streamed in uneven batches, as validation feeds them
        metrics.update_real(chunk.float() / 127.5 - 1)
    for chunk in fake.split(6):
        metrics.update_fake(chunk)
    ours = metrics.compute()
    theirs = torch_fidelity.calculate_metrics(
        input1=_Images(to_uint8(fake)), input2=_Images(real), isc=True, fid=True, isc_splits=2, feature_layer_fid=fid_features,
        cuda=False, feature_extractor_weights_path=str(weights), batch_size=n, save_cpu_ram=True, cache=False, verbose=False)
    # float32 features of other batch compositions differ in the last bits: 1e-7–1e-6 apart, std (a
    # difference of two split scores) 1e-5
    assert ours["is_mean"].item() == pytest.approx(theirs["inception_score_mean"], rel=1e-5)
    assert ours["is_std"].item() == pytest.approx(theirs["inception_score_std"], rel=1e-4)
    assert ours["fid"].item() == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)
    assert ours["is_mean"] > 1.5 and ours["fid"] > 0  # far from the degenerate values
    metrics.update_real(real[:4].float() / 127.5 - 1)  # compute() reset the statistics
    assert metrics.scores.real_n == 4


def test_is_and_fid_agree_with_torch_fidelity(random_inception, monkeypatch):
    monkeypatch.setattr(fe.FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", SMALL)
    _compare_with_torch_fidelity(random_inception, "64")


@pytest.mark.slow
def test_is_and_standard_fid_agree_with_torch_fidelity_at_299(tmp_path):
    _compare_with_torch_fidelity(_save_random_inception(tmp_path / "random_inception.pth", 299), "2048")
