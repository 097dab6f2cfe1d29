# ResNet-56 (He et al., 2016) on CIFAR-10 with cross-entropy: the baseline of the ReLoss paper's
# CIFAR-10 row. mmpretrain's CIFAR-10 data pipeline and 200-epoch schedule (SGD 0.1, momentum 0.9,
# steps at 100 and 150), on one GPU with batch 128 (the schedule's own batch, 8 x 16 there).
_base_ = 'mmpretrain::resnet/resnet18_8xb16_cifar10.py'
custom_imports = dict(imports=['reloss.mmpretrain'], allow_failed_imports=False)

model = dict(
    backbone=dict(_delete_=True, type='ResNetCIFARPaper', depth=56),
    head=dict(in_channels=64))
train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader
