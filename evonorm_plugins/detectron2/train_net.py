"""``evonorm-d2-train``: detectron2's ``tools/train_net.py`` with the evonorm_plugins layers registered.

Same flags as ``train_net.py`` (detectron2's ``default_argument_parser``: ``--config-file``,
``--eval-only``, ``--resume``, ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``,
then ``KEY VALUE`` overrides) and the same train / evaluate loop (``DefaultTrainer``, test-time
augmentation when ``TEST.AUG.ENABLED``). What differs: importing :mod:`evonorm_plugins.detectron2`
makes the registry names valid ``NORM`` values and registers the EvoNorm backbones and heads, and the
optimizer gives EvoNorm parameters ``SOLVER.WEIGHT_DECAY_NORM``. ``train_net.py`` ships with
detectron2's sources, not its package, so this module carries the equivalent ``main``.

Run it as ``evonorm-d2-train --config-file configs/detectron2/scratch_mask_rcnn_R_50_FPN_3x_evonorm_s0.yaml``
or ``python -m evonorm_plugins.detectron2.train_net ...``. ``--dataset NAME=ANNOTATIONS.json:IMAGE_DIR``
(repeatable) registers a COCO-format dataset to name in ``DATASETS.TRAIN`` / ``DATASETS.TEST``, so
your own data needs no code. Python (LazyConfig) configs that use the
plugin's callables import it themselves and train with detectron2's ``tools/lazyconfig_train_net.py``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import detectron2.utils.comm as comm  # after the plugin, which explains a missing detectron2
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import (
    DefaultTrainer,
    default_argument_parser,
    default_setup,
    hooks,
    launch,
)
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    LVISEvaluator,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
    verify_results,
)
from detectron2.modeling import GeneralizedRCNNWithTTA
from torch import nn
from torch.optim import Optimizer

from ..user_errors import run_reporting_user_errors
from .solver import build_evonorm_optimizer


def build_evaluator(cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
    """The evaluator(s) ``train_net.py`` picks from the dataset's ``evaluator_type`` metadata."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    single = {
        "cityscapes_instance": lambda: CityscapesInstanceEvaluator(dataset_name),
        "cityscapes_sem_seg": lambda: CityscapesSemSegEvaluator(dataset_name),
        "pascal_voc": lambda: PascalVOCDetectionEvaluator(dataset_name),
        "lvis": lambda: LVISEvaluator(dataset_name, output_dir=output_folder),
    }
    if evaluator_type in single:
        return single[evaluator_type]()
    evaluators: List[DatasetEvaluator] = []
    if evaluator_type in ("sem_seg", "coco_panoptic_seg"):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if evaluator_type in ("coco", "coco_panoptic_seg"):
        evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder))
    if evaluator_type == "coco_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    if not evaluators:
        raise NotImplementedError(
            f"no evaluator for dataset {dataset_name!r} with evaluator_type {evaluator_type!r}; set "
            f"MetadataCatalog.get({dataset_name!r}).evaluator_type to one of coco, lvis, sem_seg, "
            f"coco_panoptic_seg, pascal_voc, cityscapes_instance, cityscapes_sem_seg"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


class Trainer(DefaultTrainer):
    """``train_net.py``'s Trainer, with the EvoNorm-aware optimizer."""

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> Optimizer:
        return build_evonorm_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model: nn.Module) -> "OrderedDict[str, Any]":
        """Evaluate with test-time augmentation (R-CNN models), as ``train_net.py`` does."""
        logging.getLogger("detectron2.trainer").info("Running inference with test-time augmentation ...")
        model = GeneralizedRCNNWithTTA(cfg, model)
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [cls.build_evaluator(cfg, name, output_folder=output_folder) for name in cfg.DATASETS.TEST]
        results = cls.test(cfg, model, evaluators)
        return OrderedDict((name + "_TTA", value) for name, value in results.items())


def parse_dataset(spec: str) -> Tuple[str, str, str]:
    """``NAME=ANNOTATIONS.json:IMAGE_DIR`` as (name, annotations file, image folder), checked."""
    name, _, rest = spec.partition("=")
    json_file, found, image_dir = rest.partition(".json:")
    json_file += ".json"
    problem = (
        "it is not NAME=ANNOTATIONS.json:IMAGE_DIR" if not (name and found and image_dir)
        else f"{json_file} is not a file" if not os.path.isfile(json_file)
        else f"{image_dir} is not a folder" if not os.path.isdir(image_dir)
        else ""
    )
    if problem:
        raise ValueError(f"{spec!r}: {problem}; give e.g. --dataset mine_train=annotations/train.json:images/train")
    return name, json_file, image_dir


def dataset_argument(spec: str) -> Tuple[str, str, str]:
    """``--dataset``'s argparse type: :func:`parse_dataset`, its error as argparse's one-line usage error."""
    try:
        return parse_dataset(spec)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register_datasets(datasets: List[Tuple[str, str, str]]) -> None:
    """Register each parsed ``--dataset`` as a COCO-format instance set (boxes, masks, COCO
    evaluation), once per process, to name in ``DATASETS.TRAIN`` / ``DATASETS.TEST``."""
    for name, json_file, image_dir in datasets:
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, json_file, image_dir)


def setup(args: argparse.Namespace) -> CfgNode:
    """The frozen config from ``--config-file`` and the ``KEY VALUE`` overrides, plus detectron2's
    logging / output-folder setup."""
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args: argparse.Namespace) -> Dict[str, Any]:
    """Train (or with ``--eval-only`` evaluate) one process's share, as ``train_net.py``'s ``main``."""
    register_datasets(args.dataset)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks([hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))])
    return trainer.train()


def cli(argv: Optional[List[str]] = None) -> int:
    """Parse ``train_net.py``'s flags (and ``--dataset``) and launch :func:`main` on every GPU / machine;
    a user's mistake is one line (``--debug`` keeps the traceback)."""
    return run_reporting_user_errors("evonorm-d2-train", _launch, argv)


def _launch(argv: List[str]) -> None:
    parser = default_argument_parser()
    parser.add_argument(
        "--dataset", action="append", default=[], type=dataset_argument, metavar="NAME=JSON:IMAGE_DIR",
        help="register a COCO-format dataset under NAME (repeatable); use NAME in DATASETS.TRAIN / DATASETS.TEST",
    )
    args = parser.parse_args(argv)  # each --dataset checked and parsed here, once, before any process starts
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    sys.exit(cli())
