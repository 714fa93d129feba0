# Baseline: mmdet's GN-all Mask R-CNN R-50-FPN, 2x schedule, unchanged (GroupNorm in the backbone, FPN,
# box and mask heads; backbone initialized from detectron's ImageNet-pretrained GN ResNet-50).
# The EvoNorm configs next to this file inherit from it and list what they change.
_base_ = 'mmdet::gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py'
