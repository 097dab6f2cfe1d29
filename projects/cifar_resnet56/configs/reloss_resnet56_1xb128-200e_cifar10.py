# The same run with ReLossCls in place of cross-entropy (the shipped 'cls' surrogate, its default
# mix: the surrogate alone).
_base_ = './resnet56_1xb128-200e_cifar10.py'
model = dict(head=dict(loss=dict(_delete_=True, type='ReLossCls')))
