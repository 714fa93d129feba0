"""The mmdet blocks and the EvoNorm Mask R-CNN configs: structure, parity with mmdet's GN/BN blocks, one
training step on synthetic data. Skipped unless mmdet 3.x and the full mmcv (compiled ops) are installed."""

import pytest
import torch

from support import ROOT

try:
    import evonorm_plugins.mmdet as evonorm_mmdet
except (ImportError, AssertionError) as error:  # AssertionError: mmdet's own check of the mmcv version
    pytest.skip(f"needs mmdet 3.x with the full mmcv it supports: {error}", allow_module_level=True)

from mmdet.models.backbones import ResNet  # noqa: E402
from mmdet.models.roi_heads.bbox_heads import Shared4Conv1FCBBoxHead  # noqa: E402
from mmdet.models.roi_heads.mask_heads import FCNMaskHead  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmdet.testing import demo_mm_inputs  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402

from evonorm_plugins import EvoNormB0, EvoNormBase, EvoNormS0  # noqa: E402

CONFIGS = ROOT / "configs" / "mmdet"
EVONORM_CONFIGS = {
    EvoNormB0: CONFIGS / "mask-rcnn_r50_fpn_evonorm-b0-all_2x_coco.py",
    EvoNormS0: CONFIGS / "mask-rcnn_r50_fpn_evonorm-s0-all_2x_coco.py",
}
GN = dict(type="GN", num_groups=4, requires_grad=True)
GN_RELU = dict(GN, type="GroupNormReLU")  # the same GN config with only the type switched


@pytest.fixture(scope="module", autouse=True)
def _mmdet_scope():
    register_all_modules(init_default_scope=True)


def randomize_norms(model: torch.nn.Module) -> None:
    """Move every norm's γ, β away from 1, 0 so the parity checks see them used."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.BatchNorm2d)):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=g) - 0.5)


def assert_same_outputs(reference: torch.nn.Module, evonorm: torch.nn.Module, x: torch.Tensor) -> None:
    randomize_norms(reference)
    evonorm.load_state_dict(reference.state_dict())  # strict: the same keys as mmdet's block
    torch.testing.assert_close(evonorm(x), reference(x))


@pytest.mark.parametrize(
    "kwargs",
    [dict(depth=50), dict(depth=18, deep_stem=True, avg_down=True)],
    ids=["r50", "r18-deep-stem-avg-down"],
)
def test_resnet_with_relu_baselines_is_mmdet_resnet(kwargs):
    """With GroupNormReLU / BatchNormReLU, EvoNormResNet computes mmdet's ResNet with GN / BN: every
    norm of the EvoNorm version sits where a norm + ReLU or a norm without ReLU was."""
    x = torch.randn(2, 3, 64, 64)
    evonorm_resnet = evonorm_mmdet.EvoNormResNet
    assert_same_outputs(ResNet(norm_cfg=GN, **kwargs), evonorm_resnet(norm_cfg=GN_RELU, **kwargs), x)
    bn, bn_relu = dict(type="BN"), dict(type="BatchNormReLU")
    assert_same_outputs(ResNet(norm_cfg=bn, **kwargs), evonorm_resnet(norm_cfg=bn_relu, **kwargs), x)


def test_heads_with_relu_baselines_are_mmdet_heads():
    common = dict(in_channels=8, conv_out_channels=8, num_classes=3)
    bbox = dict(common, roi_feat_size=7, fc_out_channels=16)
    rois = torch.randn(5, 8, 7, 7)
    reference = Shared4Conv1FCBBoxHead(norm_cfg=GN, **bbox)
    assert_same_outputs(reference, evonorm_mmdet.EvoNormShared4Conv1FCBBoxHead(norm_cfg=GN_RELU, **bbox), rois)
    mask = dict(common, num_convs=2)
    rois = torch.randn(5, 8, 14, 14)
    reference = FCNMaskHead(norm_cfg=GN, **mask)
    assert_same_outputs(reference, evonorm_mmdet.EvoNormFCNMaskHead(norm_cfg=GN_RELU, **mask), rois)


def test_blocks_reject_plain_norms():
    with pytest.raises(ValueError, match=r"EvoNormResNet needs norm_cfg=dict\(type=<an evonorm_plugins layer>\)"):
        evonorm_mmdet.EvoNormResNet(depth=18, norm_cfg=GN)
    with pytest.raises(ValueError, match=r"EvoNormFCNMaskHead needs norm_cfg"):
        evonorm_mmdet.EvoNormFCNMaskHead(norm_cfg=None)


def test_norm_eval_and_zero_init_residual():
    backbone = evonorm_mmdet.EvoNormResNet(depth=50, norm_cfg=dict(type="EvoNormB0"), norm_eval=True).train()
    evonorms = [m for m in backbone.modules() if isinstance(m, EvoNormBase)]
    assert evonorms and not any(m.training for m in evonorms)
    backbone.norm_eval = False
    assert all(m.training for m in backbone.train().modules() if isinstance(m, EvoNormBase))

    backbone.init_weights()
    for layer_name in backbone.res_layers:
        for block in getattr(backbone, layer_name):
            assert block.norm3.weight.abs().sum() == 0 and block.norm2.weight.abs().sum() > 0


def evonorm_sites(model):
    """Names of the activating and of the non-activating (apply_act=False) EvoNorms of ``model``."""
    activating, linear = [], []
    for name, module in model.named_modules():
        if isinstance(module, EvoNormBase):
            (activating if module.apply_act else linear).append(name)
    return activating, linear


@pytest.mark.parametrize("layer_class", list(EVONORM_CONFIGS), ids=lambda c: c.__name__)
def test_mask_rcnn_config_trains_one_step(layer_class):
    cfg = Config.fromfile(EVONORM_CONFIGS[layer_class])
    assert cfg.optim_wrapper.paramwise_cfg.norm_decay_mult == 0.0  # EvoNorm variables free of weight decay
    model = MODELS.build(cfg.model)
    model.init_weights()
    norms = [m for m in model.modules() if isinstance(m, EvoNormBase)]
    assert norms and all(type(m) is layer_class for m in norms)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())

    activating, linear = evonorm_sites(model)
    # GN + ReLU: stem, conv1/conv2 of the 16 bottlenecks, 4 box-head convs and 4 mask-head convs.
    assert len(activating) == 1 + 2 * 16 + 4 + 4
    # GN alone: the end of each bottleneck, the 4 shortcuts, 4 lateral and 4 output convs of the FPN.
    assert len(linear) == 16 + 4 + 4 + 4
    assert all(name.startswith(("neck.", "backbone.")) for name in linear)

    # No activation module takes an unmodified EvoNorm output as its input.
    outputs, violations = [], []

    def record(module, inputs, output):
        outputs.append((output, output._version))

    def check(module, inputs):
        if any(inputs[0] is out and inputs[0]._version == version for out, version in outputs):
            violations.append(module)

    hooks = [m.register_forward_hook(record) for m in norms]
    activations = (torch.nn.ReLU, torch.nn.SiLU, torch.nn.GELU, torch.nn.LeakyReLU)
    hooks += [m.register_forward_pre_hook(check) for m in model.modules() if isinstance(m, activations)]

    torch.manual_seed(0)
    shapes = [(3, 96, 128), (3, 128, 96)]
    data = demo_mm_inputs(batch_size=2, image_shapes=shapes, num_items=[3, 2], num_classes=80, with_mask=True)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9))
    log_vars = model.train_step(data, optim_wrapper)
    for hook in hooks:
        hook.remove()

    assert not violations
    for key in ["loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask", "loss"]:
        assert torch.isfinite(torch.as_tensor(log_vars[key])), (key, log_vars)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    trained = [
        "backbone.evonorm1.weight",
        "backbone.layer4.2.evonorm3.weight",
        "neck.fpn_convs.0.evonorm.weight",
        "roi_head.bbox_head.shared_convs.3.evonorm.weight",
        "roi_head.mask_head.convs.3.evonorm.weight",
    ]
    for name in trained:
        assert name in changed, name

    model.eval()  # inference: B-series layers switch to their running statistics
    with torch.no_grad():
        results = model.test_step(data)
    for result, (_, height, width) in zip(results, shapes):
        masks, boxes = result.pred_instances.masks, result.pred_instances.bboxes
        assert masks.shape[1:] == (height, width) and torch.isfinite(boxes).all()
