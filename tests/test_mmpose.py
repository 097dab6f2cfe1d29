"""ReLossPose in mmpose: the loss, mmpose's HeatmapHead calling it, and the project configs."""
import os

import pytest
import torch

pytest.importorskip("mmpose")

from mmpose.registry import MODELS  # noqa: E402

import reloss  # noqa: E402
import reloss.mmpose  # noqa: E402,F401  (registers ReLossPose)
from reloss.tasks.pose import gaussian_heatmaps  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def mmpose_scope():
    """Registries resolve in the default scope, which other tests' Runners may have changed."""
    from mmengine.registry import init_default_scope

    init_default_scope("mmpose")


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
    with pytest.raises(ValueError, match=r"'checkpoint' should be a pose .*\('pose'\) surrogate "
                                         r"but 'cls' is a 'cls' one"):
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


# The real mmpose pipeline, top-down heatmap model and CocoMetric, on generated COCO-format data.

@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    from tools.benchmarks import generate_coco_keypoints

    return generate_coco_keypoints.write(str(tmp_path_factory.mktemp("coco")), 48, 16)


def runner_config(path, root, extra=""):
    """The proxy experiment's config (mmpose's SimpleBaseline config with a small backbone and
    the generated data), ReLossPose, one epoch."""
    from tools.benchmarks import pose_proxy

    path.write_text(pose_proxy.config_text(root, "ReLossPose", extra=extra))
    return str(path)


def test_runner_trains_validates_with_coco_metric_saves_and_resumes(coco_root, tmp_path):
    from tools import train

    config = runner_config(tmp_path / "cfg.py", coco_root)
    work = str(tmp_path / "run")
    runner = train.main([config, "--work-dir", work])
    assert type(runner.model.head.loss_module).__name__ == "ReLossPose"
    scalars = next((tmp_path / "run").glob("*/vis_data/scalars.json")).read_text()
    assert '"coco/AP"' in scalars and '"PCK"' in scalars and '"loss_kpt"' in scalars
    torch.load(os.path.join(work, "epoch_1.pth"), weights_only=True)
    resumed = train.main([config, "--work-dir", work, "--resume",
                          "--cfg-options", "train_cfg.max_epochs=2"])
    assert resumed.train_loop.epoch == 2
    shipped = reloss.load_surrogate("pose").state_dict()
    mine = resumed.model.head.loss_module.surrogate.state_dict()
    assert all(torch.equal(mine[k], shipped[k]) for k in shipped)


@pytest.mark.slow
def test_two_process_ddp_on_cpu_trains(coco_root, tmp_path):
    import subprocess
    import sys

    extra = "env_cfg = dict(dist_cfg=dict(backend='gloo'))"
    config = runner_config(tmp_path / "cfg.py", coco_root, extra=extra)
    env = dict(os.environ, PYTHON=sys.executable, PORT="29523", OMP_NUM_THREADS="1")
    result = subprocess.run([os.path.join(ROOT, "tools", "dist_train.sh"), config, "2",
                             "--work-dir", str(tmp_path / "run")], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Distributed training: True" in result.stdout + result.stderr
    assert (tmp_path / "run" / "epoch_1.pth").exists()


@pytest.mark.parametrize("task", ["cls", "pose"])
def test_step_benchmark_runs(task, capsys):
    from tools.benchmarks import step as benchmark_step

    result = benchmark_step.main(["--task", task, "--steps", "1", "--warmup", "0",
                                  "--batch", "2", "--device", "cpu"])
    assert result["ratio"] > 0 and "ratio" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the long-tailed counts need two classes or more
        benchmark_step.main(["--task", task, "--classes", "1", "--device", "cpu"])
    assert "--classes should be at least 2 but got 1" in capsys.readouterr().err


def test_compiled_loss_matches_the_eager_loss():
    """Under torch.compile (mmengine's ``compile``) ReLossPose traces as it is."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    loss = MODELS.build(dict(type="ReLossPose", use_target_weight=True))
    net, x = torch.nn.Conv2d(3, 17, 1), torch.randn(4, 3, 16, 12)
    target, weights = torch.rand(4, 17, 16, 12), (torch.rand(4, 17) > 0.2).float()

    def step():
        net.zero_grad()
        value = loss(net(x), target, weights)
        value.backward()
        return value.detach(), [p.grad.clone() for p in net.parameters()]

    (value, grads), (eager, eager_grads) = torch.compile(step, backend="aot_eager")(), step()
    torch.testing.assert_close(value, eager)
    for mine, theirs in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(mine, theirs)
