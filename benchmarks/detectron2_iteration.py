"""Seconds per Mask R-CNN training iteration on this machine: detectron2's GN scratch config against the
same config with only NORM changed (detectron2's stock builders, placed by the plugin) and against the
project's EvoNorm configs, interleaved in one run so the ratios share the machine's state.

    python benchmarks/detectron2_iteration.py --iterations 6 --size 256 --warmup 1

Synthetic images and boxes (no dataset needed); forward + backward + SGD step of the whole model.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Dict, List

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import evonorm_plugins.detectron2 as plugin

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "detectron2"
NORM_KEYS = ("RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD")
SETTINGS: Dict[str, tuple] = {
    "GN (detectron2's config)": ("scratch_mask_rcnn_R_50_FPN_3x_gn.yaml", {}),
    "NORM: EvoNormS0 only": ("scratch_mask_rcnn_R_50_FPN_3x_gn.yaml", {f"MODEL.{k}.NORM": "EvoNormS0" for k in NORM_KEYS}),
    "NORM: EvoNormB0 only": ("scratch_mask_rcnn_R_50_FPN_3x_gn.yaml", {f"MODEL.{k}.NORM": "EvoNormB0" for k in NORM_KEYS}),
    "project EvoNorm-S0 config": ("scratch_mask_rcnn_R_50_FPN_3x_evonorm_s0.yaml", {}),
}


def batch(size: int, images: int) -> List[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(images):
        instances = Instances((size, size))
        corners = torch.randint(0, size // 2, (3, 2), generator=g).float()
        instances.gt_boxes = Boxes(torch.cat([corners, corners + size // 4], dim=1))
        instances.gt_classes = torch.randint(0, 2, (3,), generator=g)
        masks = torch.zeros(3, size, size, dtype=torch.bool)
        for m, (x0, y0, x1, y1) in zip(masks, instances.gt_boxes.tensor.long().tolist()):
            m[y0:y1, x0:x1] = True
        instances.gt_masks = BitMasks(masks)
        out.append({"image": torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8), "instances": instances})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations per setting")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per setting first")
    parser.add_argument("--size", type=int, default=256, help="image side")
    parser.add_argument("--images", type=int, default=2, help="images per iteration")
    args = parser.parse_args()
    models, optimizers = {}, {}
    for name, (file, overrides) in SETTINGS.items():
        cfg = get_cfg()
        cfg.merge_from_file(str(CONFIGS / file))
        cfg.merge_from_list([x for pair in overrides.items() for x in pair] + [
            "MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", "2", "INPUT.MIN_SIZE_TRAIN", f"({args.size},)",
            "INPUT.MAX_SIZE_TRAIN", str(args.size)])
        torch.manual_seed(0)
        models[name] = build_model(cfg).train()
        optimizers[name] = plugin.build_evonorm_optimizer(cfg, models[name])
    data = batch(args.size, args.images)
    times: Dict[str, List[float]] = {name: [] for name in SETTINGS}
    with EventStorage():
        for step in range(args.warmup + args.iterations):
            for name, model in models.items():  # interleaved: each round times every setting once
                start = time.perf_counter()
                loss = sum(model(data).values())
                optimizers[name].zero_grad()
                loss.backward()
                optimizers[name].step()
                if step >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    base = statistics.median(times["GN (detectron2's config)"])
    print(f"| setting ({args.images} images of {args.size}x{args.size}, CPU, {torch.get_num_threads()} threads) | s / iteration | ratio to GN |")
    print("|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
