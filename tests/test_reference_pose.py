"""The pose reference task of tools/benchmarks/training.py: its data, its loss and its CLI."""
import pytest
import torch

from reloss.predictions import load_predictions
from tools.benchmarks.reference import pose


def test_data_are_fixed_and_well_formed():
    first, again = pose.generate(40, torch.Generator().manual_seed(0)), pose.generate(
        40, torch.Generator().manual_seed(0))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    images, targets, weights = first
    assert images.shape == (40, 1, pose.IMAGE, pose.IMAGE)
    assert targets.shape == (40, len(pose.KEYPOINTS), pose.HEATMAP, pose.HEATMAP)
    assert weights.shape == (40, len(pose.KEYPOINTS))
    hidden = weights == 0
    assert 0 < int(hidden.sum()) < weights.numel() // 2  # occluded or outside joints
    assert float(targets[hidden].abs().sum()) == 0.0
    # Visible targets peak at 1 near the joint, mostly off the pixel grid (sub-pixel positions).
    peaks = targets[~hidden].flatten(1).amax(-1)
    assert float(peaks.max()) <= 1.0 and float(peaks.min()) > 0.6 and float(peaks.median()) < 0.95


def test_body17_figures_have_their_own_sizes():
    images, targets, weights = pose.generate(8, torch.Generator().manual_seed(0), "body17")
    assert images.shape == (8, 1, 64, 48)
    assert targets.shape == (8, 17, 32, 24) and weights.shape == (8, 17)
    assert 0 < float(weights.mean()) < 1
    with pytest.raises(ValueError, match="'figures' should be one of"):
        pose.data("body5")


def test_original_loss_is_mmpose_keypoint_mse_with_target_weight():
    pred, target, weight = pose.timing_inputs(torch.Generator().manual_seed(0))
    assert pred.shape == (64, 17, 64, 48) and weight.shape == (64, 17)
    expected = ((pred - target) * weight[..., None, None]).square().mean()
    torch.testing.assert_close(pose.original_loss(pred, target, weight), expected)
    torch.testing.assert_close(pose.original_loss(pred, target), (pred - target).square().mean())


def test_stored_predictions_follow_the_schema(tmp_path, monkeypatch):
    def fake_run(name, loss_fn, seed, record=None, **kwargs):
        net = pose.model()
        for k in range(1, 11):
            record(k / 10, net)
        return dict(curve=[[1.0, 0.0]], final=0.0)

    monkeypatch.setattr(pose, "run", fake_run)
    path = tmp_path / "predictions.pt"
    pose.store_predictions(str(path), pose.original_loss, [0], count=16)
    chunks = load_predictions(str(path), "pose", 8)
    assert len(chunks) == 10  # a group per snapshot, of 16 images: two chunks of 8
    assert chunks[0][0].shape == (2, 8, 5, pose.HEATMAP, pose.HEATMAP)


def test_cli_refuses_another_tasks_surrogate(tmp_path, capsys):
    with pytest.raises(SystemExit):
        pose.main(["--checkpoint", "cls", "--out", str(tmp_path / "p.pt")])
    assert "--checkpoint 'cls' is a 'cls' surrogate, not a 'pose' one" in capsys.readouterr().err
