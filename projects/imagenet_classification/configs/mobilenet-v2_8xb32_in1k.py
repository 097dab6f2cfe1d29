# The cross-entropy baseline: mmpretrain's MobileNetV2 config (300 epochs, SGD 0.045 with a 0.98
# per-epoch decay), unchanged but for the import.
_base_ = 'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py'
custom_imports = dict(imports=['reloss.mmpretrain'], allow_failed_imports=False)
