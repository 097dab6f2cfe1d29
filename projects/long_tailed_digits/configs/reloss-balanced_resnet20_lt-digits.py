# The same run with the class-aware surrogate learned for balanced accuracy, told how many
# training images each class has.
_base_ = './resnet20_lt-digits.py'
model = dict(head=dict(loss=dict(_delete_=True, type='ReLossCls', checkpoint='cls-balanced',
                                 class_counts={{_base_.class_counts}})))
