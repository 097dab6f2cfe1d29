"""ReLossCls and the CIFAR ResNets in mmpretrain, driven through the real mmengine Runner."""
import math
import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("mmpretrain")

from mmpretrain.registry import MODELS  # noqa: E402

import reloss  # noqa: E402
import reloss.mmpretrain  # noqa: E402,F401  (registers ReLossCls, ResNetCIFARPaper)
from reloss.cli import collect  # noqa: E402
from reloss.predictions import load_predictions  # noqa: E402
from tools import train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def mmpretrain_scope():
    """Registries resolve in the default scope, which other tests' Runners may have changed."""
    from mmengine.registry import init_default_scope

    init_default_scope("mmpretrain")


def write_images(root, per_split=(40, 20), size=32):
    """scikit-learn's digits as 32x32 RGB PNGs in class folders (CustomDataset's layout)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    start = 0
    for split, count in zip(("train", "val"), per_split, strict=True):
        for i in range(start, start + count):
            folder = root / split / str(labels[i])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (images[i].reshape(8, 8) * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).resize((size, size)).convert("RGB").save(folder / f"{i}.png")
        start += count


CONFIG = """
_base_ = 'mmpretrain::resnet/{base}.py'
custom_imports = dict(imports=['reloss.mmpretrain'], allow_failed_imports=False)
pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False, dataset=dict(
    _delete_=True, type='CustomDataset', data_root='{root}', data_prefix='train',
    pipeline=pipeline))
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False, dataset=dict(
    _delete_=True, type='CustomDataset', data_root='{root}', data_prefix='val', pipeline=pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1, val_interval=1)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
{extra}
"""

RESNET20 = """
model = dict(backbone=dict(_delete_=True, type='ResNetCIFARPaper', depth=20),
             head=dict(in_channels=64, loss=dict(type='ReLossCls')))
"""


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits_images")
    write_images(root)
    return root


def write_config(path, root, base="resnet18_8xb16_cifar10", extra=RESNET20):
    path.write_text(CONFIG.format(base=base, root=root, extra=extra))
    return str(path)


def test_runner_trains_and_validates_with_relosscls(image_root, tmp_path):
    config = write_config(tmp_path / "cfg.py", image_root)
    runner = train.main([config, "--work-dir", str(tmp_path / "run")])
    loss = runner.model.head.loss_module
    assert type(loss).__name__ == "ReLossCls"
    assert (tmp_path / "run" / "epoch_1.pth").exists()
    # The frozen surrogate is outside the model: no parameter of it reaches the optimizer.
    optimized = {id(p) for group in runner.optim_wrapper.optimizer.param_groups
                 for p in group["params"]}
    assert not optimized & {id(p) for p in loss.surrogate.parameters()}
    shipped = reloss.load_surrogate("cls")
    for mine, theirs in zip(loss.surrogate.parameters(), shipped.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert "loss.surrogate" not in "".join(runner.model.state_dict())


def test_official_config_with_only_the_loss_swapped_trains(image_root, tmp_path):
    extra = "model = dict(head=dict(loss=dict(type='ReLossCls')))\n" \
            "train_cfg = dict(max_epochs=1, val_interval=1)"
    config = write_config(tmp_path / "cfg.py", image_root, extra=extra)
    runner = train.main([config, "--work-dir", str(tmp_path / "run"),
                         "--cfg-options", "train_dataloader.batch_size=4"])
    assert runner.train_loop.iter > 0


def test_mixup_config_trains_with_soft_labels(image_root, tmp_path):
    extra = RESNET20 + "model.update(train_cfg=dict(augments=dict(type='Mixup', alpha=1.0)))"
    config = write_config(tmp_path / "cfg.py", image_root, extra=extra)
    runner = train.main([config, "--work-dir", str(tmp_path / "run")])
    assert runner.train_loop.iter > 0


def test_loss_matches_the_bare_surrogate_and_cross_entropy_mix():
    logits = torch.randn(16, 10, requires_grad=True)
    labels = torch.randint(10, (16,))
    surrogate = reloss.load_surrogate("cls")
    loss = MODELS.build(dict(type="ReLossCls", loss_weight=2.0, ce_weight=0.5))
    expected = 2.0 * (surrogate(logits, labels, reduction="none")
                      + 0.5 * torch.nn.functional.cross_entropy(logits, labels, reduction="none"))
    torch.testing.assert_close(loss(logits, labels, avg_factor=16), expected.sum() / 16)
    torch.testing.assert_close(loss(logits, labels, reduction_override="none"), expected)
    weight = torch.rand(16)
    torch.testing.assert_close(loss(logits, labels, weight=weight, reduction_override="sum"),
                               (expected * weight).sum())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_logits_give_a_float32_loss(dtype):
    loss = MODELS.build(dict(type="ReLossCls"))
    logits = torch.randn(8, 10).to(dtype).requires_grad_()
    value = loss(logits, torch.randint(10, (8,)))
    assert value.dtype == torch.float32
    value.backward()
    assert logits.grad.dtype == dtype and bool(torch.isfinite(logits.grad).all())


@pytest.mark.parametrize("call, message", [
    (lambda loss: loss(torch.randn(4, 10), torch.tensor([1, 2, 42, 3])),
     r"'label' should hold class indices in \[0, 10\) for 10 classes"),
    (lambda loss: loss(torch.randn(4, 10), torch.zeros(5, dtype=torch.long)),
     r"'label' should be \(N,\) = \(4,\) class indices"),
    (lambda loss: loss(torch.full((4, 10), float("nan")), torch.zeros(4, dtype=torch.long)),
     r"'cls_score' should hold only finite values"),
    (lambda loss: loss(torch.randn(4, 10), torch.full((4, 10), 0.5)),
     r"'label' scores should be >= 0 with rows that sum to 1"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call(MODELS.build(dict(type="ReLossCls")))


@pytest.mark.parametrize("checkpoint, error, message", [
    ("missing.pt", FileNotFoundError, r"'missing.pt' is neither a shipped surrogate \('cls', "
                                      r"'cls-balanced', 'cls-macro-f1', 'nat', 'pose', 'qa'\) "
                                      r"nor a file"),
    ("pose", ValueError, r"'checkpoint' should be a classification \('cls'\) surrogate but "
                         r"'pose' is a 'pose' one"),
])
def test_bad_checkpoint_is_refused(checkpoint, error, message):
    with pytest.raises(error, match=message):
        MODELS.build(dict(type="ReLossCls", checkpoint=checkpoint))


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "broken.pt"
    with open(reloss.checkpoint.MANIFEST.replace("manifest.json", "cls.pt"), "rb") as f:
        path.write_bytes(f.read()[:100])
    with pytest.raises(ValueError, match=r"broken.pt"):
        MODELS.build(dict(type="ReLossCls", checkpoint=str(path)))


@pytest.mark.parametrize("depth, blocks, parameters", [(56, 9, 0.85e6), (110, 18, 1.7e6)])
def test_cifar_resnets_have_the_papers_shape(depth, blocks, parameters):
    backbone = MODELS.build(dict(type="ResNetCIFARPaper", depth=depth))
    assert [len(getattr(backbone, name)) for name in backbone.res_layers] == [blocks] * 3
    count = sum(p.numel() for p in backbone.parameters())
    assert abs(count - parameters) / parameters < 0.05, count
    (features,) = backbone(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 64, 8, 8)
    with pytest.raises(KeyError, match=r"'depth' should be one of \[20, 32, 44, 56, 110\]"):
        MODELS.build(dict(type="ResNetCIFARPaper", depth=50))


def test_resume_restores_training_and_keeps_the_surrogate(image_root, tmp_path):
    """Save, then resume from the Runner's own checkpoint with torch.load(weights_only=True)."""
    config = write_config(tmp_path / "cfg.py", image_root)
    work = str(tmp_path / "run")
    train.main([config, "--work-dir", work])
    checkpoint = torch.load(os.path.join(work, "epoch_1.pth"), weights_only=True)
    assert "message_hub" in checkpoint and "optimizer" in checkpoint
    runner = train.main([config, "--work-dir", work, "--resume",
                         "--cfg-options", "train_cfg.max_epochs=2"])
    assert runner.train_loop.epoch == 2
    assert os.path.exists(os.path.join(work, "epoch_2.pth"))
    from tools import test as test_tool

    metrics = test_tool.main([config, os.path.join(work, "epoch_2.pth"),
                              "--work-dir", str(tmp_path / "test")])
    assert 0 <= metrics["accuracy/top1"] <= 100
    shipped = reloss.load_surrogate("cls")
    surrogate = runner.model.head.loss_module.surrogate
    for mine, theirs in zip(surrogate.parameters(), shipped.parameters(), strict=True):
        assert torch.equal(mine, theirs)


HOOK = """
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.dist import get_rank


@HOOKS.register_module()
class SaveSurrogate(Hook):
    def after_train(self, runner):
        model = getattr(runner.model, 'module', runner.model)
        surrogate = model.head.loss_module.surrogate
        torch.save(surrogate.state_dict(), f'{runner.work_dir}/surrogate_rank{get_rank()}.pt')
"""


@pytest.mark.slow
def test_two_process_ddp_on_cpu_keeps_the_surrogate_identical(image_root, tmp_path):
    import subprocess

    (tmp_path / "save_surrogate_hook.py").write_text(HOOK)
    extra = RESNET20 + ("custom_imports = dict(imports=['reloss.mmpretrain', "
                        "'save_surrogate_hook'], allow_failed_imports=False)\n"
                        "custom_hooks = [dict(type='SaveSurrogate')]\n"
                        "env_cfg = dict(dist_cfg=dict(backend='gloo'))\n")
    config = write_config(tmp_path / "cfg.py", image_root, extra=extra)
    work = tmp_path / "run"
    env = dict(os.environ, PYTHON=sys.executable, PORT="29517", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([os.path.join(ROOT, "tools", "dist_train.sh"), config, "2",
                             "--work-dir", str(work)], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Distributed training: True" in result.stdout + result.stderr
    shipped = reloss.load_surrogate("cls").state_dict()
    for rank in (0, 1):
        state = torch.load(work / f"surrogate_rank{rank}.pt", weights_only=True)
        assert all(torch.equal(state[k], shipped[k]) for k in shipped)


PROJECT_CONFIGS = sorted(
    os.path.join(folder, "configs", name)
    for folder in (os.path.join(ROOT, "projects", "cifar_resnet56"),
                   os.path.join(ROOT, "projects", "imagenet_classification"))
    for name in os.listdir(os.path.join(folder, "configs")) if name.endswith(".py"))


@pytest.mark.parametrize("path", PROJECT_CONFIGS, ids=os.path.basename)
def test_project_configs_load_and_build(path):
    from mmengine.config import Config

    cfg = Config.fromfile(path)
    model = MODELS.build(cfg.model)
    loss = model.head.loss_module
    expected = "ReLossCls" if os.path.basename(path).startswith("reloss_") else "CrossEntropyLoss"
    assert type(loss).__name__ == expected
    if "cifar" in path:
        assert type(model.backbone).__name__ == "ResNetCIFARPaper"
        assert model.backbone.depth == 56 and cfg.train_dataloader.batch_size == 128
        classes = 100 if "cifar100" in path else 10
        assert model.head.num_classes == classes


def test_collected_predictions_feed_pretraining(image_root, tmp_path, capsys):
    """The loop of the paper: train with cross-entropy, collect the model's predictions
    (reloss collect-predictions), then they load as stored predictions for reloss pretrain
    --data."""
    extra = RESNET20.replace("loss=dict(type='ReLossCls')", "loss=dict(type='CrossEntropyLoss')")
    config = write_config(tmp_path / "cfg.py", image_root, extra=extra)
    train.main([config, "--work-dir", str(tmp_path / "run")])
    out = tmp_path / "preds.pt"
    data = collect.main([config, str(tmp_path / "run" / "epoch_1.pth"), "--out", str(out),
                         "--group", "1"])
    assert data["logits"].shape == (20, 10) and data["labels"].shape == (20,)
    assert "wrote 20 predictions of 10 classes" in capsys.readouterr().out
    chunks = load_predictions(str(out), "cls", 8, torch.Generator().manual_seed(0))
    assert [tuple(pred.shape) for pred, _, _ in chunks] == [(2, 8, 10)]  # 20 -> 2 chunks of 8
    with pytest.raises(SystemExit):
        collect.main([config, str(tmp_path / "run" / "epoch_1.pth"), "--out", str(out)])
    assert "pass --force" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_trains_both_losses_and_prints_the_table(tmp_path, capsys):
    from tools.benchmarks import demo_digits

    out = tmp_path / "demo"
    result = demo_digits.main(["--out", str(out), "--seeds", "1", "--epochs", "1"])
    printed = capsys.readouterr().out
    assert "| cross-entropy |" in printed and "| ReLossCls |" in printed and str(out) in printed
    assert {"results.md", "results.json", "curves.png"} <= {p.name for p in out.iterdir()}
    for name in ("cross-entropy", "ReLossCls"):
        ((epoch, accuracy),) = result["curves"][name][0]
        assert epoch == 1 and accuracy > 30  # chance is 10%


@pytest.mark.slow
def test_multimodal_dependencies_do_not_break_the_import(tmp_path):
    """With pycocotools and transformers >= 4.28 both installed, mmpretrain 1.2 imports its BLIP
    models, whose transformers imports transformers 5 no longer has; reloss.mmpretrain must still
    import and register its loss. pycocotools is stood in for by its metadata alone (mmpretrain
    decides on the installed distribution, never importing it)."""
    import subprocess

    pytest.importorskip("transformers")
    info = tmp_path / "site" / "pycocotools-2.0.11.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pycocotools\nVersion: 2.0.11\n")
    script = (
        "from mmpretrain.utils.dependency import WITH_MULTIMODAL, satisfy_requirement\n"
        "assert WITH_MULTIMODAL and satisfy_requirement('pycocotools')\n"
        "import reloss.mmpretrain\n"
        "import mmpretrain.models\n"
        "import torch\n"
        "from mmpretrain.registry import MODELS\n"
        "loss = MODELS.build(dict(type='ReLossCls'))\n"
        "print('loss', float(loss(torch.randn(8, 10), torch.randint(10, (8,)))))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(info.parent), ROOT]))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("loss ")


LONG_TAILED = os.path.join(ROOT, "projects", "long_tailed_digits")


@pytest.fixture(scope="module")
def long_tailed_root(tmp_path_factory):
    sys.path.insert(0, LONG_TAILED)
    try:
        import prepare
    finally:
        sys.path.remove(LONG_TAILED)
    root = tmp_path_factory.mktemp("lt_digits") / "data"
    counts = prepare.write(str(root), 10)
    return root, counts


def test_long_tailed_config_trains_with_the_class_counts(long_tailed_root, tmp_path):
    """The project's config trains through the Runner with ReLossCls(checkpoint='cls-balanced',
    class_counts=...), whose counts are the ones prepare.py writes, and reports macro recall and
    F1."""
    from mmengine.config import Config

    root, counts = long_tailed_root
    config = os.path.join(LONG_TAILED, "configs", "reloss-balanced_resnet20_lt-digits.py")
    assert Config.fromfile(config).class_counts == counts
    options = [f"{loader}.dataset.data_root={root}" for loader in
               ("train_dataloader", "val_dataloader", "test_dataloader")]
    runner = train.main([config, "--work-dir", str(tmp_path / "run"), "--cfg-options",
                         *options, "train_cfg.max_epochs=1", "train_cfg.val_interval=1"])
    loss = runner.model.head.loss_module
    assert isinstance(loss.surrogate, reloss.ClassAwareSurrogate)
    assert torch.allclose(loss.priors.cpu(), torch.tensor(counts) / sum(counts))
    assert runner.train_loop.iter == -(-sum(counts) // 32)
    metrics = runner.val_loop.run()
    assert {"single-label/recall", "single-label/f1-score"} <= set(metrics)


def test_class_counts_that_do_not_fit_are_refused():
    logits, labels = torch.randn(4, 5), torch.tensor([0, 1, 2, 1])
    with pytest.raises(ValueError, match="'class_counts' is read by class-aware surrogates"):
        MODELS.build(dict(type="ReLossCls", class_counts=[1, 2, 3, 4, 5]))
    for counts in ([1, -2, 3, 4, 5], [1, float("nan"), 3, 4, 5], [0, 0, 0], [[1, 2]], "12"):
        with pytest.raises(ValueError, match="'class_counts' should"):
            MODELS.build(dict(type="ReLossCls", checkpoint="cls-balanced", class_counts=counts))
    for counts, message in (([1, 2, 3], "one count per class, 5"),
                            ([4, 3, 0, 2, 1], "should be > 0 for every class that has a label")):
        loss = MODELS.build(dict(type="ReLossCls", checkpoint="cls-balanced",
                                 class_counts=counts))
        with pytest.raises(ValueError, match=message):
            loss(logits, labels)


@pytest.mark.parametrize("classes", [10, 1000])
def test_class_counts_loss_is_the_surrogate_mean(classes):
    """ReLossCls with class counts (its frozen evaluation, scale folded in) gives the value and
    the gradient of the trainable surrogate's mean under autograd, times loss_weight and N /
    avg_factor as mmpretrain's reduction does."""
    counts = [100 ** (-c / (classes - 1)) for c in range(classes)]
    loss = MODELS.build(dict(type="ReLossCls", checkpoint="cls-balanced", class_counts=counts,
                             loss_weight=2.0))
    plain = reloss.load_surrogate("cls-balanced", trainable=True)
    generator = torch.Generator().manual_seed(classes)
    logits = (3 * torch.randn(32, classes, generator=generator)).requires_grad_()
    labels = torch.randint(classes, (32,), generator=generator)
    ours = loss(logits, labels, avg_factor=16)
    theirs = 2.0 * 2 * plain(logits, labels, priors=reloss.class_priors(counts))
    assert type(ours.grad_fn).__name__ == "_FrozenClassAwareBackward"
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(*(torch.autograd.grad(v, logits)[0] for v in (ours, theirs)),
                               rtol=1e-4, atol=1e-7)


def test_compiled_model_trains_with_relosscls(image_root, tmp_path):
    """mmengine's ``compile`` (torch.compile of the model's train step, the loss inside it):
    the loss takes its autograd path there, as the written-out one cannot be traced."""
    extra = RESNET20 + "compile = dict(backend='aot_eager')"
    config = write_config(tmp_path / "cfg.py", image_root, extra=extra)
    runner = train.main([config, "--work-dir", str(tmp_path / "run")])
    assert runner.train_loop.iter == 5
    assert math.isfinite(runner.message_hub.get_scalar("train/loss").current())


@pytest.mark.parametrize("checkpoint", ["cls", "cls-balanced"])
def test_compiled_loss_matches_the_eager_loss(checkpoint):
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    counts = [100 ** (-c / 9) for c in range(10)] if checkpoint != "cls" else None
    loss = reloss.mmpretrain.ReLossCls(checkpoint=checkpoint, class_counts=counts)
    net, x, y = torch.nn.Linear(8, 10), torch.randn(32, 8), torch.randint(10, (32,))

    def step():
        net.zero_grad()
        value = loss(net(x), y, avg_factor=32)
        value.backward()
        return value.detach(), [p.grad.clone() for p in net.parameters()]

    compiled = torch.compile(step, backend="aot_eager")
    (value, grads), (eager, eager_grads) = compiled(), step()
    torch.testing.assert_close(value, eager)
    for mine, theirs in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(mine, theirs)
