# The same run with the class-aware surrogate learned for macro-F1.
_base_ = './resnet20_lt-digits.py'
model = dict(head=dict(loss=dict(_delete_=True, type='ReLossCls', checkpoint='cls-macro-f1',
                                 class_counts={{_base_.class_counts}})))
