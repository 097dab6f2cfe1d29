# MobileNetV2 on ImageNet-1k with ReLossCls in place of cross-entropy.
_base_ = './mobilenet-v2_8xb32_in1k.py'
model = dict(head=dict(loss=dict(_delete_=True, type='ReLossCls')))
