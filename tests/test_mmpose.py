"""ReLossPose in mmpose: the loss, mmpose's HeatmapHead calling it, and the project configs."""
import os

import pytest
import torch

pytest.importorskip("mmpose")

from mmpose.registry import MODELS  # noqa: E402

import reloss  # noqa: E402
import reloss.mmpose  # noqa: E402,F401  (registers ReLossPose)
from reloss.samplers import gaussian_heatmaps  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def heatmaps(batch=3, keypoints=17, size=(64, 48), seed=0):
    generator = torch.Generator().manual_seed(seed)
    extent = torch.tensor([size[1] - 1, size[0] - 1], dtype=torch.float32)
    centers = torch.rand(batch, keypoints, 2, generator=generator) * extent
    target = gaussian_heatmaps(centers, size, 2.0)
    moved = centers + 3 * torch.randn(batch, keypoints, 2, generator=generator)
    output = gaussian_heatmaps(moved, size, 2.0, 0.7) + 0.05 * torch.randn(
        batch, keypoints, *size, generator=generator)
    weights = (torch.rand(batch, keypoints, generator=generator) < 0.8).float()
    return output, target * weights[..., None, None], weights


def test_loss_is_the_surrogate_plus_weighted_mse():
    output, target, weights = heatmaps()
    surrogate = reloss.load_surrogate("pose")
    loss = MODELS.build(dict(type="ReLossPose", use_target_weight=True, loss_weight=2.0,
                             mse_weight=0.5))
    mse = MODELS.build(dict(type="KeypointMSELoss", use_target_weight=True))
    expected = 2.0 * (surrogate(output, target, weights) + 0.5 * mse(output, target, weights))
    torch.testing.assert_close(loss(output, target, weights), expected)


@pytest.mark.parametrize("size", [(64, 48), (96, 72), (32, 24)])
def test_any_heatmap_size_trains(size):
    output, target, weights = heatmaps(size=size)
    output.requires_grad_()
    loss = MODELS.build(dict(type="ReLossPose", use_target_weight=True))
    value = loss(output, target, weights)
    value.backward()
    assert torch.isfinite(value) and float(output.grad.abs().sum()) > 0
    assert not list(loss.parameters()) and not loss.state_dict()  # the surrogate is outside


def test_weights_masks_and_empty_channels():
    output, target, weights = heatmaps()
    loss = MODELS.build(dict(type="ReLossPose", use_target_weight=True))
    # Invisible keypoints do not count: changing their heatmaps changes nothing.
    changed = output.clone()
    changed[weights == 0] = torch.rand_like(changed[weights == 0])
    torch.testing.assert_close(loss(changed, target, weights), loss(output, target, weights))
    # Pixel-wise weights equal to the keypoint weights give the same loss.
    pixel = weights[..., None, None].expand_as(output)
    torch.testing.assert_close(loss(output, target, pixel), loss(output, target, weights))
    # skip_empty_channel ignores heatmaps whose target is all zero, as zero weights would.
    skipping = MODELS.build(dict(type="ReLossPose", skip_empty_channel=True))
    torch.testing.assert_close(skipping(output, target), loss(output, target, weights))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_heatmaps_give_a_float32_loss(dtype):
    output, target, weights = heatmaps()
    low = output.to(dtype).requires_grad_()
    value = MODELS.build(dict(type="ReLossPose", use_target_weight=True))(low, target, weights)
    assert value.dtype == torch.float32
    value.backward()
    assert low.grad.dtype == dtype and bool(torch.isfinite(low.grad).all())


def test_heatmap_head_calls_it_unchanged():
    from mmengine.structures import InstanceData, PixelData
    from mmpose.structures import PoseDataSample

    torch.manual_seed(0)
    head = MODELS.build(dict(type="HeatmapHead", in_channels=8, out_channels=17,
                             deconv_out_channels=None,
                             loss=dict(type="ReLossPose", use_target_weight=True)))
    _, target, weights = heatmaps(batch=2, size=(16, 12))
    samples = []
    for i in range(2):
        sample = PoseDataSample()
        sample.gt_fields = PixelData(heatmaps=target[i])
        sample.gt_instance_labels = InstanceData(keypoint_weights=weights[i:i + 1])
        samples.append(sample)
    features = (torch.randn(2, 8, 16, 12, requires_grad=True),)
    losses = head.loss(features, samples)
    assert set(losses) == {"loss_kpt", "acc_pose"}
    losses["loss_kpt"].backward()
    assert float(features[0].grad.abs().sum()) > 0


@pytest.mark.parametrize("call, message", [
    (lambda loss: loss(torch.rand(2, 17, 8, 6), torch.rand(2, 17, 8, 5), torch.ones(2, 17)),
     r"'target' should have the shape of 'output' \(2, 17, 8, 6\) but got \(2, 17, 8, 5\)"),
    (lambda loss: loss(torch.rand(2, 17, 8, 6), torch.rand(2, 17, 8, 6), torch.ones(2, 16)),
     r"'target_weights' should be \(B, K\) = \(2, 17\) or \(B, K, H, W\) = \(2, 17, 8, 6\) but "
     r"got \(2, 16\)"),
    (lambda loss: loss(torch.full((2, 17, 8, 6), float("nan")), torch.rand(2, 17, 8, 6),
                       torch.ones(2, 17)),
     r"'output' should hold only finite values"),
    (lambda loss: loss(torch.rand(2, 17, 8), torch.rand(2, 17, 8), torch.ones(2, 17)),
     r"'output' should be a 4-D \(B, K, H, W\) heatmaps tensor but got shape \(2, 17, 8\)"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call(MODELS.build(dict(type="ReLossPose", use_target_weight=True)))


def test_another_tasks_checkpoint_is_refused():
    with pytest.raises(ValueError, match=r"'checkpoint' should be a pose \('pose'\) surrogate but "
                                         r"'cls' is a 'cls' one"):
        MODELS.build(dict(type="ReLossPose", checkpoint="cls"))


PROJECT_CONFIGS = sorted(
    os.path.join(ROOT, "projects", "coco_pose", "configs", name)
    for name in os.listdir(os.path.join(ROOT, "projects", "coco_pose", "configs"))
    if name.endswith(".py"))


@pytest.mark.parametrize("path", PROJECT_CONFIGS, ids=os.path.basename)
def test_project_configs_load_and_build(path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(path)
    init_default_scope("mmpose")
    model = MODELS.build(cfg.model)
    expected = "ReLossPose" if os.path.basename(path).startswith("reloss_") else "KeypointMSELoss"
    assert type(model.head.loss_module).__name__ == expected
    assert model.head.loss_module.use_target_weight
