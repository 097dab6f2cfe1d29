# ResNet-56 on CIFAR-100 with cross-entropy: mmpretrain's CIFAR-100 data and schedule (200 epochs,
# SGD 0.1, weight decay 5e-4, steps at 60, 120 and 160 with gamma 0.2), one GPU, batch 128.
_base_ = 'mmpretrain::resnet/resnet50_8xb16_cifar100.py'
custom_imports = dict(imports=['reloss.mmpretrain'], allow_failed_imports=False)

model = dict(
    backbone=dict(_delete_=True, type='ResNetCIFARPaper', depth=56),
    head=dict(in_channels=64))
train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader
