# Mask R-CNN R-50-FPN, 2x schedule, with EvoNorm-S0 (32 groups) in place of every GroupNorm of GN-all
# Mask R-CNN: ./mask-rcnn_r50_fpn_evonorm-b0-all_2x_coco.py, which lists the changes, with S0 for B0.
# S0 uses no batch statistics, so it behaves the same for any number of images per GPU.
_base_ = './mask-rcnn_r50_fpn_evonorm-b0-all_2x_coco.py'

norm_cfg = dict(type='EvoNormS0', groups=32, requires_grad=True)
norm_cfg_no_act = dict(type='EvoNormS0', groups=32, apply_act=False, requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    neck=dict(norm_cfg=norm_cfg_no_act),
    roi_head=dict(
        bbox_head=dict(norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))
