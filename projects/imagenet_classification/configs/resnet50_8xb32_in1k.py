# The cross-entropy baseline: mmpretrain's own config, unchanged but for the import that the
# ReLoss variant needs too (so both runs load the same code).
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'
custom_imports = dict(imports=['reloss.mmpretrain'], allow_failed_imports=False)
