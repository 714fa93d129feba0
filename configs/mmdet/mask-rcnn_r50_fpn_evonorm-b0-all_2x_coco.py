# Mask R-CNN R-50-FPN, 2x schedule: GN-all Mask R-CNN (./mask-rcnn_r50_fpn_gn-all_2x_coco.py) with
# EvoNorm-B0 in place of every GroupNorm of the backbone, FPN, box and mask heads.
#
# What changes from GN-all:
# - Norm layers. EvoNormB0 where GroupNorm + ReLU was. EvoNormB0(apply_act=False) where no ReLU followed
#   the GroupNorm: the FPN convs (norm_cfg_no_act below), and the end of each residual branch and
#   shortcut (EvoNormResNet derives those from norm_cfg itself).
# - Blocks (from evonorm_plugins.mmdet): EvoNormResNet, EvoNormShared4Conv1FCBBoxHead and
#   EvoNormFCNMaskHead are mmdet's blocks without the ReLUs that followed a norm, so no activation
#   directly follows an EvoNorm. The RPN head has no norm in GN-all and is unchanged.
# - Backbone initialization. mmdet's model zoo has no ImageNet-pretrained EvoNorm ResNet-50, so the
#   backbone starts from random weights: nothing frozen, ImageNet RGB normalization of the inputs.
#   With an ImageNet-pretrained EvoNorm-B0 ResNet-50 of your own (mmdet's ResNet key names, norms named
#   "evonorm1", ...), set backbone init_cfg=dict(type='Pretrained', checkpoint=...) and frozen_stages=1
#   as GN-all does. Without one, note that mmdet trains GN-all from scratch for 6x, not 2x
#   (mmdet::scratch/mask-rcnn_r50-scratch_fpn_gn-all_6x_coco.py).
# - EvoNorm-B0 normalizes with batch statistics, per GPU and not synchronized. norm_eval=False keeps
#   them in use during training (GN-all leaves norm_eval=True, which affects only BatchNorm; in
#   EvoNormResNet it also switches EvoNorms to their running statistics).
# - Weight decay. The official code excludes EvoNorm variables (v, gamma, beta) from weight decay;
#   norm_decay_mult=0 does that here, since evonorm_plugins.mmcv makes every EvoNorm a norm to mmengine.
_base_ = './mask-rcnn_r50_fpn_gn-all_2x_coco.py'
custom_imports = dict(imports=['evonorm_plugins.mmdet'], allow_failed_imports=False)

norm_cfg = dict(type='EvoNormB0', requires_grad=True)
norm_cfg_no_act = dict(type='EvoNormB0', apply_act=False, requires_grad=True)
model = dict(
    data_preprocessor=dict(
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True),
    backbone=dict(
        type='EvoNormResNet',
        norm_cfg=norm_cfg,
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=None),
    neck=dict(norm_cfg=norm_cfg_no_act),
    roi_head=dict(
        bbox_head=dict(type='EvoNormShared4Conv1FCBBoxHead', norm_cfg=norm_cfg),
        mask_head=dict(type='EvoNormFCNMaskHead', norm_cfg=norm_cfg)))
optim_wrapper = dict(paramwise_cfg=dict(norm_decay_mult=0.0))
