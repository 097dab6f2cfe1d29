# ResNet-50 on ImageNet-1k with ReLossCls in place of cross-entropy; everything else is
# mmpretrain's resnet50_8xb32_in1k (100 epochs, SGD 0.1, steps at 30, 60 and 90), which is the
# cross-entropy baseline: `python tools/train.py mmpretrain::resnet/resnet50_8xb32_in1k.py` or
# ./resnet50_8xb32_in1k.py here.
_base_ = './resnet50_8xb32_in1k.py'
model = dict(head=dict(loss=dict(_delete_=True, type='ReLossCls')))
