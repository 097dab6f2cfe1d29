# ResNet-20 (the ReLoss paper's CIFAR ResNet) on long-tailed digits (imbalance 10, written by
# projects/long_tailed_digits/prepare.py) with cross-entropy: the baseline. Scored on the
# class-balanced validation set by macro recall (= balanced accuracy) and macro-F1.
_base_ = 'mmpretrain::resnet/resnet18_8xb16_cifar10.py'
custom_imports = dict(imports=['reloss.mmpretrain'], allow_failed_imports=False)

data_root = 'data/lt_digits'
# Training images per class (OUT/class_counts.json of prepare.py --imbalance 10).
class_counts = [113, 87, 68, 52, 41, 31, 24, 19, 15, 11]

model = dict(
    backbone=dict(_delete_=True, type='ResNetCIFARPaper', depth=20),
    head=dict(in_channels=64, num_classes=10))
pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(batch_size=32, num_workers=0, persistent_workers=False, dataset=dict(
    _delete_=True, type='CustomDataset', data_root=data_root, data_prefix='train',
    pipeline=pipeline))
val_dataloader = dict(batch_size=128, num_workers=0, persistent_workers=False, dataset=dict(
    _delete_=True, type='CustomDataset', data_root=data_root, data_prefix='val',
    pipeline=pipeline))
test_dataloader = dict(batch_size=128, num_workers=0, persistent_workers=False, dataset=dict(
    _delete_=True, type='CustomDataset', data_root=data_root, data_prefix='test',
    pipeline=pipeline))
val_evaluator = dict(_delete_=True, type='SingleLabelMetric', items=('recall', 'f1-score'),
                     average='macro')
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(lr=0.05))
param_scheduler = dict(_delete_=True, type='CosineAnnealingLR', by_epoch=True, T_max=30)
train_cfg = dict(max_epochs=30, val_interval=10)
default_hooks = dict(checkpoint=dict(interval=30))
