"""The detectron2 plugin and the configs in configs/detectron2: registry names as NORM, placement (no
activation directly after an EvoNorm, parity with detectron2's GN blocks), training details, and two
training iterations plus inference of each config on a tiny synthetic COCO dataset. Skipped unless
detectron2 is installed (it is not on PyPI; see the README)."""
import json
import math

import numpy as np
import pytest
import torch

from support import ROOT

pytest.importorskip("detectron2", reason="detectron2 is not installed (build it from source, see the README)")

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import LazyCall as L  # noqa: E402
from detectron2.config import get_cfg, instantiate  # noqa: E402
from detectron2.data import (  # noqa: E402
    DatasetCatalog,
    MetadataCatalog,
    build_detection_train_loader,
)
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.backbone import FPN, ResNet  # noqa: E402
from detectron2.modeling.backbone.fpn import LastLevelMaxPool  # noqa: E402
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead  # noqa: E402
from detectron2.structures import Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from PIL import Image  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

import evonorm_plugins as ep  # noqa: E402
import evonorm_plugins.detectron2 as plugin  # noqa: E402
from evonorm_plugins import (  # noqa: E402
    EvoNormB0,
    EvoNormBase,
    EvoNormS0,
    GroupNormReLU,
    paper_genome,
)
from evonorm_plugins.registry import register_layer, unregister_layer  # noqa: E402

CONFIGS = ROOT / "configs" / "detectron2"
CONFIG_FILES = {
    "gn": CONFIGS / "scratch_mask_rcnn_R_50_FPN_3x_gn.yaml",
    "evonorm_b0": CONFIGS / "scratch_mask_rcnn_R_50_FPN_3x_evonorm_b0.yaml",
    "evonorm_s0": CONFIGS / "scratch_mask_rcnn_R_50_FPN_3x_evonorm_s0.yaml",
}
EVONORM_CLASSES = {"evonorm_b0": EvoNormB0, "evonorm_s0": EvoNormS0}
IMAGE_SIZE = 64


def load_cfg(key, **overrides):
    """A config of configs/detectron2 shrunk for CPU tests: 64x64 inputs, few proposals and ROIs."""
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG_FILES[key]))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 5
    cfg.INPUT.MIN_SIZE_TRAIN = (IMAGE_SIZE,)
    cfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MAX_SIZE_TRAIN = cfg.INPUT.MAX_SIZE_TEST = IMAGE_SIZE
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.002
    cfg.merge_from_list([item for pair in overrides.items() for item in pair])
    return cfg


def build(key, **overrides):
    torch.manual_seed(0)
    return build_model(load_cfg(key, **overrides))


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------


def test_every_registry_name_is_a_norm_everywhere_detectron2_binds_get_norm():
    import sys

    assert {"detectron2.layers", "detectron2.modeling.backbone.fpn", "detectron2.modeling.roi_heads.box_head",
            "detectron2.modeling.roi_heads.mask_head", "detectron2.modeling.meta_arch.retinanet",
            "detectron2.modeling.meta_arch.semantic_seg"} <= set(plugin.REBOUND_MODULES)
    for module_name in plugin.REBOUND_MODULES:
        get_norm = sys.modules[module_name].get_norm
        assert get_norm is plugin.get_norm, module_name
    for name in ep.list_layers():
        layer = plugin.get_norm(name, 64)
        assert type(layer) is ep.get_layer_class(name)


def test_builtin_norms_and_callables_are_unchanged():
    from detectron2.layers import FrozenBatchNorm2d

    assert type(plugin.get_norm("GN", 64)) is torch.nn.GroupNorm
    assert isinstance(plugin.get_norm("BN", 64), torch.nn.BatchNorm2d)
    assert type(plugin.get_norm("FrozenBN", 64)) is FrozenBatchNorm2d
    assert plugin.get_norm("", 64) is None and plugin.get_norm(None, 64) is None
    assert type(plugin.get_norm(lambda c: torch.nn.LayerNorm(c), 8)) is torch.nn.LayerNorm
    with pytest.raises(ValueError, match=r"unknown NORM 'EvoNormSO'.*EvoNormS0.*EVONORM_GENOMES"):
        plugin.get_norm("EvoNormSO", 64)


def test_a_layer_registered_later_is_a_norm_too():
    register_layer("EvolvedForD2Test", paper_genome("EvoNormB0"))
    try:
        assert type(plugin.get_norm("EvolvedForD2Test", 16)).__name__ == "EvolvedForD2Test"
    finally:
        unregister_layer("EvolvedForD2Test")



def test_sync_names_build_layers_with_synchronized_batch_statistics():
    """``Sync<Name>``, like detectron2's ``SyncBN``: the layer with ``sync_stats=True``, for every layer
    with batch statistics; a per-sample layer has nothing to synchronize and says so."""
    for name in ("EvoNormB0", "EvoNormB1", "EvoNormB2", "BatchNormReLU"):
        layer = plugin.get_norm("Sync" + name, 16)
        assert type(layer) is ep.get_layer_class(name) and layer.sync_stats
    assert isinstance(plugin.get_norm("SyncBN", 16), torch.nn.SyncBatchNorm)  # detectron2's own
    with pytest.raises(ValueError, match=r"'SyncEvoNormS0': EvoNormS0 takes no statistics over the batch.*use 'EvoNormS0'"):
        plugin.get_norm("SyncEvoNormS0", 16)


@pytest.mark.parametrize("key", ["gn", "evonorm_b0"])
def test_changing_only_norm_to_sync_evonorm_b0_synchronizes_every_layer(key):
    """detectron2's GN config (stock builders, placed) and the project's config (explicit blocks, FPN
    in the non-activating form) with NORM: SyncEvoNormB0: all 69 layers synchronize, placed as usual."""
    model = build(key, **{f"MODEL.{k}.NORM": "SyncEvoNormB0" for k in ("RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD")})
    layers = [m for m in model.modules() if isinstance(m, EvoNormB0)]
    assert len(layers) == 69 and all(m.sync_stats for m in layers)
    activating, linear = evonorm_sites(model)
    assert (len(activating), len(linear)) == (41, 28)

NORM_ONLY = {f"MODEL.{key}.NORM": "EvoNormS0" for key in ("RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD")}


def test_changing_only_norm_in_detectron2s_gn_config_places_the_layers_the_papers_way():
    """detectron2's own GN scratch config with only the NORM keys changed: stock builders, and no
    activation on any EvoNorm output; the same module tree, placement and function as the project's
    config (EvoNorm backbone and heads) for the same weights."""
    model = build("gn", **NORM_ONLY).eval()
    assert type(model.roi_heads.box_head).__name__ == "FastRCNNConvFCHead"  # detectron2's, not ours
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    project = build("evonorm_s0").eval()
    assert evonorm_sites(model) == evonorm_sites(project)  # 41 activating, 28 not, at the same places
    model.load_state_dict(project.state_dict())  # strict: detectron2's weights layout
    x, box_rois, mask_rois = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE), torch.randn(3, 256, 7, 7), torch.randn(3, 256, 14, 14)
    with torch.no_grad(), ActivationAfterNorm(model) as watch:
        features = model.backbone(x)
        box = model.roi_heads.box_head(box_rois)
        mask = model.roi_heads.mask_head.layers(mask_rois)
    assert watch.checked > 0 and not watch.violations
    with torch.no_grad():
        expected = project.backbone(x)
        for level in expected:
            torch.testing.assert_close(features[level], expected[level])
        torch.testing.assert_close(box, project.roi_heads.box_head(box_rois))
        torch.testing.assert_close(mask, project.roi_heads.mask_head.layers(mask_rois))


def test_placement_reaches_retinanet_and_semantic_segmentation_heads_and_leaves_gn_alone():
    from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead

    retina = RetinaNetHead(input_shape=[ShapeSpec(channels=32)], num_classes=3, num_anchors=9, conv_dims=[32, 32], norm="EvoNormS0")
    seg = SemSegFPNHead(input_shape={"p2": ShapeSpec(channels=32, stride=4), "p3": ShapeSpec(channels=32, stride=8)},
                        num_classes=3, conv_dims=32, common_stride=4, norm="EvoNormS0")
    for head in (retina, seg):
        assert plugin.place_evonorms(head)
    assert sum(isinstance(m, torch.nn.ReLU) for m in retina.modules()) == 0
    features = [torch.randn(2, 32, 8, 8)]
    with torch.no_grad(), ActivationAfterNorm(retina) as watch:
        retina(features)
    assert not watch.violations  # the subnets' ReLUs are gone (the layers' own sigmoids are counted, not flagged)
    with torch.no_grad(), ActivationAfterNorm(seg) as watch:
        seg.layers({"p2": torch.randn(2, 32, 16, 16), "p3": torch.randn(2, 32, 8, 8)})
    assert not watch.violations
    gn = RetinaNetHead(input_shape=[ShapeSpec(channels=32)], num_classes=3, num_anchors=9, conv_dims=[32], norm="GN")
    assert plugin.place_evonorms(gn) == [] and sum(isinstance(m, torch.nn.ReLU) for m in gn.modules()) == 2


def test_a_module_the_placement_does_not_know_is_named_in_one_warning():
    from detectron2.layers import Conv2d

    class ThirdPartyHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = Conv2d(8, 8, 3, padding=1, norm=ep.get_layer("EvoNormS0", 8, groups=4))

        def forward(self, x):
            return torch.relu(self.conv(x))  # a ReLU the placement cannot see

    holder = torch.nn.ModuleDict({"head": ThirdPartyHead()})
    with pytest.warns(UserWarning, match=r"cannot tell whether these modules apply a ReLU .*: head \(ThirdPartyHead\)"):
        plugin.place_evonorms(holder)


def test_freeze_at_freezes_running_statistics_in_detectron2s_own_backbone():
    model = build("gn", **{**NORM_ONLY, "MODEL.RESNETS.NORM": "EvoNormB0", "MODEL.BACKBONE.FREEZE_AT": 2}).train()
    bottom_up = model.backbone.bottom_up
    frozen = [m for part in (bottom_up.stem, bottom_up.res2) for m in part.modules() if isinstance(m, EvoNormB0)]
    trained = [m for m in bottom_up.res3.modules() if isinstance(m, EvoNormB0)]
    assert frozen and trained and all(not m.training and not m.weight.requires_grad for m in frozen)
    before = {id(m): m.running_var.clone() for m in frozen + trained}
    bottom_up(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert all(torch.equal(m.running_var, before[id(m)]) for m in frozen)
    assert all(not torch.equal(m.running_var, before[id(m)]) for m in trained)


# --------------------------------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------------------------------


def evonorm_sites(model):
    activating = [n for n, m in model.named_modules() if isinstance(m, EvoNormBase) and m.apply_act]
    linear = [n for n, m in model.named_modules() if isinstance(m, EvoNormBase) and not m.apply_act]
    return activating, linear


class ActivationAfterNorm(TorchFunctionMode):
    """Records every activation function (module or functional, in place or not) applied to an
    unmodified output of a registry norm layer."""

    ACTIVATIONS = {torch.relu, torch.relu_, torch.nn.functional.relu, torch.nn.functional.relu_,
                   torch.nn.functional.silu, torch.nn.functional.gelu, torch.sigmoid,
                   torch.nn.functional.leaky_relu}

    def __init__(self, model):
        super().__init__()
        self.outputs, self.violations, self.checked = [], [], 0
        self.hooks = [m.register_forward_hook(self.record) for m in model.modules() if plugin.is_norm_layer(m)]

    def record(self, module, inputs, output):
        self.outputs.append((output, output._version, type(module).__name__))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.ACTIVATIONS and args and isinstance(args[0], torch.Tensor):
            self.checked += 1
            for output, version, name in self.outputs:
                if args[0] is output and output._version == version:
                    self.violations.append((name, func))
        return func(*args, **(kwargs or {}))

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        return super().__exit__(*exc)


@pytest.mark.parametrize("key", list(EVONORM_CLASSES))
def test_layers_sit_where_norm_relu_pairs_were(key):
    model = build(key)
    norms = [m for m in model.modules() if plugin.is_norm_layer(m)]
    assert norms and all(type(m) is EVONORM_CLASSES[key] for m in norms)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    activating, linear = evonorm_sites(model)
    # GN + ReLU: stem, conv1/conv2 of the 16 bottlenecks, 4 box-head convs and 4 mask-head convs.
    assert len(activating) == 1 + 2 * 16 + 4 + 4
    # GN alone: the end of each bottleneck, the 4 shortcuts, 4 lateral and 4 output convs of the FPN.
    assert len(linear) == 16 + 4 + 4 + 4
    assert all(name.startswith("backbone.") for name in linear)


def randomize_norms(model):
    """Move every GN's γ, β away from 1, 0 so the parity check sees them used."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=g) - 0.5)


def test_with_groupnormrelu_the_evonorm_blocks_compute_detectron2s_gn_blocks():
    """Each layer of the EvoNorm model sits where a GN + ReLU or a GN alone was: with GroupNormReLU
    (and its non-activating form, plain GN) the EvoNorm backbone and heads compute the GN model."""
    evonorm_names = {"MODEL.BACKBONE.NAME": "build_evonorm_resnet_fpn_backbone",
                     "MODEL.ROI_BOX_HEAD.NAME": "EvoNormFastRCNNConvFCHead",
                     "MODEL.ROI_MASK_HEAD.NAME": "EvoNormMaskRCNNConvUpsampleHead"}
    evonorm_names.update({f"MODEL.{key}.NORM": "GroupNormReLU" for key in ("RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD")})
    reference, candidate = build("gn").eval(), build("gn", **evonorm_names).eval()
    assert sum(isinstance(m, GroupNormReLU) for m in candidate.modules()) == 69
    randomize_norms(reference)
    candidate.load_state_dict(reference.state_dict())  # strict: the same keys as detectron2's model
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        expected, actual = reference.backbone(x), candidate.backbone(x)
        for level in expected:
            torch.testing.assert_close(actual[level], expected[level])
        rois = torch.randn(3, 256, 7, 7)
        torch.testing.assert_close(candidate.roi_heads.box_head(rois), reference.roi_heads.box_head(rois))
        rois = torch.randn(3, 256, 14, 14)
        torch.testing.assert_close(candidate.roi_heads.mask_head.layers(rois), reference.roi_heads.mask_head.layers(rois))


def test_blocks_reject_plain_norms():
    with pytest.raises(ValueError, match=r"build_evonorm_resnet_backbone \(MODEL.RESNETS.NORM\) needs norm to name.*EVONORM_GENOMES"):
        build("gn", **{"MODEL.BACKBONE.NAME": "build_evonorm_resnet_fpn_backbone"})
    with pytest.raises(ValueError, match=r"EvoNormMaskRCNNConvUpsampleHead needs its NORM.*EVONORM_GENOMES"):
        build("gn", **{"MODEL.ROI_MASK_HEAD.NAME": "EvoNormMaskRCNNConvUpsampleHead"})


# --------------------------------------------------------------------------------------------------
# LazyConfig
# --------------------------------------------------------------------------------------------------


def test_lazy_config_builds_the_same_model_as_the_yaml_config():
    norm = plugin.EvoNormFactory("EvoNormS0")
    features = ["res2", "res3", "res4", "res5"]
    backbone = L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(plugin.EvoNormBasicStem)(in_channels=3, out_channels=64, norm=norm),
            stages=L(ResNet.make_default_stages)(depth=50, block_class=plugin.EvoNormBottleneckBlock, norm=norm),
            out_features=features,
        ),
        in_features=features,
        out_channels=256,
        norm=norm.without_activation(),
        top_block=L(LastLevelMaxPool)(),
    )
    box_head = L(plugin.EvoNormFastRCNNConvFCHead)(
        input_shape=ShapeSpec(channels=256, height=7, width=7), conv_dims=[256] * 4, fc_dims=[1024], conv_norm=norm
    )
    yaml_model = build("evonorm_s0")
    for lazy, built in [(backbone, yaml_model.backbone), (box_head, yaml_model.roi_heads.box_head)]:
        module = instantiate(lazy)
        shapes = {k: v.shape for k, v in module.state_dict().items()}
        assert shapes == {k: v.shape for k, v in built.state_dict().items()}
        assert evonorm_sites(module) == evonorm_sites(built)


def test_factory_checks_the_name_when_the_config_is_written():
    with pytest.raises(KeyError, match="did you mean 'EvoNormB0'"):
        plugin.EvoNormFactory("evonormb0")


# --------------------------------------------------------------------------------------------------
# Training details
# --------------------------------------------------------------------------------------------------


def test_norm_parameters_get_weight_decay_norm():
    cfg = load_cfg("evonorm_s0", **{"SOLVER.WEIGHT_DECAY": 1e-4, "SOLVER.WEIGHT_DECAY_NORM": 0.0})
    model = build_model(cfg)
    optimizer = plugin.build_evonorm_optimizer(cfg, model)
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    norm_params = [p for m in model.modules() if plugin.is_norm_layer(m) for p in m.parameters()]
    assert norm_params and all(decay[id(p)] == 0.0 for p in norm_params)
    assert decay[id(model.backbone.bottom_up.stem.conv1.weight)] == 1e-4
    assert len(decay) == sum(1 for p in model.parameters() if p.requires_grad)


def test_freeze_at_freezes_parameters_and_running_statistics():
    model = build("evonorm_b0", **{"MODEL.BACKBONE.FREEZE_AT": 2}).train()
    bottom_up = model.backbone.bottom_up
    frozen = [m for part in (bottom_up.stem, bottom_up.res2) for m in part.modules() if isinstance(m, EvoNormB0)]
    trained = [m for m in bottom_up.res3.modules() if isinstance(m, EvoNormB0)]
    assert frozen and all(not m.training and not m.weight.requires_grad for m in frozen)
    assert all(m.training and m.weight.requires_grad for m in trained)
    before = {id(m): m.running_var.clone() for m in frozen + trained}
    bottom_up(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert all(torch.equal(m.running_var, before[id(m)]) for m in frozen)
    assert all(not torch.equal(m.running_var, before[id(m)]) for m in trained)
    assert all(not m.training for m in frozen) and model.eval().train() is model
    assert all(not m.training for m in frozen)


@pytest.mark.parametrize("layer", ["EvoNormB0", "EvolvedB0ForD2Test"])
def test_empty_roi_batches_leave_running_statistics_alone(layer):
    register_layer("EvolvedB0ForD2Test", paper_genome("EvoNormB0"))
    try:
        model = build("evonorm_b0", **{"MODEL.ROI_BOX_HEAD.NORM": layer, "MODEL.ROI_MASK_HEAD.NORM": layer}).train()
        heads = [model.roi_heads.box_head, model.roi_heads.mask_head]
        buffers = {name: b.clone() for head in heads for name, b in head.named_buffers()}
        assert buffers
        box = heads[0](torch.zeros(0, 256, 7, 7, requires_grad=True))
        mask = heads[1].layers(torch.zeros(0, 256, 14, 14, requires_grad=True))
        assert box.shape == (0, 1024) and mask.shape == (0, 2, 28, 28)
        (box.sum() + mask.sum()).backward()
        for head in heads:
            for name, buffer in head.named_buffers():
                assert torch.equal(buffer, buffers[name]), name
    finally:
        unregister_layer("EvolvedB0ForD2Test")


def test_checkpoints_save_and_load(tmp_path):
    model = build("evonorm_b0").train()
    model.backbone(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE))  # move the running variances off 1
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    restored = build("evonorm_b0")
    DetectionCheckpointer(restored).load(str(tmp_path / "model.pth"))
    saved = model.state_dict()
    assert any("running_var" in k for k in saved)
    for key, value in restored.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# Training and inference of each config
# --------------------------------------------------------------------------------------------------


def square_polygon(x, y, size):
    return [float(v) for v in (x, y, x + size, y, x + size, y + size, x, y + size)]


def write_tiny_coco(root):
    """A 3-image COCO-format dataset of 64x64 images with squares of two classes; returns its JSON."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in range(1, 4):
        pixels = rng.integers(0, 60, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        for k, (x, y, size) in enumerate([(4 + 4 * image_id, 6, 24), (36, 30 - 4 * image_id, 20)]):
            pixels[y:y + size, x:x + size] = (200, 60 + 120 * k, 40)
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=k + 1, iscrowd=0,
                bbox=[x, y, size, size], area=size * size, segmentation=[square_polygon(x, y, size)],
            ))
        Image.fromarray(pixels).save(root / f"{image_id}.png")
        images.append(dict(id=image_id, file_name=f"{image_id}.png", height=IMAGE_SIZE, width=IMAGE_SIZE))
    categories = [dict(id=1, name="red"), dict(id=2, name="orange")]
    json_file = root / "instances.json"
    json_file.write_text(json.dumps(dict(images=images, annotations=annotations, categories=categories)))
    return json_file


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    """The tiny COCO-format dataset, registered as ``evonorm_tiny_coco``."""
    root = tmp_path_factory.mktemp("tiny_coco")
    json_file = write_tiny_coco(root)
    name = "evonorm_tiny_coco"
    register_coco_instances(name, {}, str(json_file), str(root))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.slow
def test_d2_train_registers_coco_datasets_from_the_command_line_then_trains_and_evaluates(tmp_path):
    from evonorm_plugins.detectron2.train_net import cli

    root = tmp_path / "data"
    root.mkdir()
    json_file = write_tiny_coco(root)
    overrides = {
        "MODEL.DEVICE": "cpu", "MODEL.ROI_HEADS.NUM_CLASSES": "2", "MODEL.RPN.POST_NMS_TOPK_TRAIN": "50",
        "MODEL.RPN.POST_NMS_TOPK_TEST": "50", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": "32",
        "INPUT.MIN_SIZE_TRAIN": f"({IMAGE_SIZE},)", "INPUT.MIN_SIZE_TEST": str(IMAGE_SIZE),
        "INPUT.MAX_SIZE_TRAIN": str(IMAGE_SIZE), "INPUT.MAX_SIZE_TEST": str(IMAGE_SIZE),
        "DATALOADER.NUM_WORKERS": "0", "SOLVER.IMS_PER_BATCH": "2", "SOLVER.BASE_LR": "0.002",
        "SOLVER.MAX_ITER": "2", "SOLVER.STEPS": "()", "SOLVER.CHECKPOINT_PERIOD": "100", "TEST.EVAL_PERIOD": "0",
        "DATASETS.TRAIN": "('mine',)", "DATASETS.TEST": "('mine',)", "OUTPUT_DIR": str(tmp_path / "out"),
    }
    try:
        cli(["--config-file", str(CONFIG_FILES["evonorm_s0"]), "--dataset", f"mine={json_file}:{root}",
             *[item for pair in overrides.items() for item in pair]])
        assert (tmp_path / "out" / "model_final.pth").is_file()
        assert (tmp_path / "out" / "inference" / "coco_instances_results.json").is_file()  # COCO evaluation ran
    finally:
        DatasetCatalog.remove("mine")
        MetadataCatalog.remove("mine")
    with pytest.raises(SystemExit):
        cli(["--config-file", str(CONFIG_FILES["evonorm_s0"]), "--dataset", f"mine={tmp_path / 'nope.json'}:{root}"])


@pytest.mark.parametrize("key", list(CONFIG_FILES))
def test_config_trains_two_iterations_and_predicts_masks(key, tiny_coco):
    cfg = load_cfg(key, **{"DATASETS.TRAIN": (tiny_coco,)})
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = plugin.build_evonorm_optimizer(cfg, model)
    batch = next(iter(build_detection_train_loader(cfg)))
    losses = []
    with EventStorage():
        for iteration in range(2):
            with ActivationAfterNorm(model) as watch:
                loss_dict = model(batch)
            assert not watch.violations and watch.checked > 0
            assert all(math.isfinite(v.item()) for v in loss_dict.values()), loss_dict
            total = sum(loss_dict.values())
            losses.append(total.item())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
    assert losses[1] <= losses[0] * 1.05, losses

    model.eval()
    with torch.no_grad(), ActivationAfterNorm(model) as watch:
        outputs = model([{"image": batch[0]["image"], "height": IMAGE_SIZE, "width": IMAGE_SIZE}])
    assert not watch.violations
    instances = outputs[0]["instances"]
    assert isinstance(instances, Instances) and len(instances) > 0
    assert instances.pred_masks.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE)
    assert torch.isfinite(instances.pred_boxes.tensor).all() and torch.isfinite(instances.scores).all()
