# The same run with ReLossCls in place of cross-entropy.
_base_ = './resnet56_1xb128-200e_cifar100.py'
model = dict(head=dict(loss=dict(_delete_=True, type='ReLossCls')))
