import json
import os
import shlex
import shutil

import pytest
import torch

import reloss
from reloss import checkpoint, pretrain
from reloss.cli import pretrain as pretrain_command
from reloss.predictions import load_predictions
from reloss.tasks import TASKS
from tools.benchmarks import digits_predictions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def raw_chunks(task, count, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return list(pretrain.synthetic_chunks(task, count, generator, **kwargs))


@pytest.mark.parametrize("task, size", [("cls", 16), ("pose", 3), ("nat", 2)])
def test_penalty_gradient_norm_equals_autograd_on_raw_predictions(task, size):
    """The Gram matrices give exactly the norm of d chunk-loss / d raw predictions."""
    torch.manual_seed(0)
    surrogate = TASKS[task].surrogate().double()
    pred, target, weight = raw_chunks(task, 3, chunk_size=size)[0]
    pred = pred.double()
    prepared = pretrain.prepare(surrogate, TASKS[task], pred, target, weight)
    prepared = {key: value.double() for key, value in prepared.items()}
    chunk_loss, squared = pretrain._loss_and_squared_gradient(surrogate, prepared)
    via_gram = squared.sqrt()

    leaf = pred.clone().requires_grad_()
    extra = () if weight is None else (weight.flatten(0, 1),)
    values = surrogate(leaf.flatten(0, 1), target.flatten(0, 1), *extra, reduction="none")
    counted = (prepared["weights"].sum(-1) > 0).double()
    direct_loss = (values.view(counted.shape) * counted).sum(-1) / counted.sum(-1)
    direct = torch.stack([torch.autograd.grad(direct_loss[i], leaf, retain_graph=True)[0][i]
                          .norm() for i in range(direct_loss.shape[0])])
    torch.testing.assert_close(chunk_loss.detach(), direct_loss.detach())
    torch.testing.assert_close(via_gram, direct, rtol=1e-4, atol=1e-9)


def test_pretraining_learns_and_is_reproducible(tmp_path):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    first = TASKS["cls"].surrogate()
    train = pretrain.prepare_batches(first, "cls", pretrain.synthetic_chunks("cls", 600, generator))
    val = pretrain.prepare_batches(first, "cls", pretrain.synthetic_chunks("cls", 200, generator))
    band = TASKS["cls"].band
    before = pretrain.correlations(pretrain.chunk_losses(first, val), val["metric"], band)
    history = pretrain.pretrain(first, train, val, band, steps=60, chunks_per_step=128,
                                eval_every=20, seed=3)
    after = pretrain.correlations(pretrain.chunk_losses(first, val), val["metric"], band)
    assert len(history) == 3
    assert after["full"] > max(before["full"], 0.85), (before, after)

    torch.manual_seed(0)
    second = TASKS["cls"].surrogate()
    pretrain.pretrain(second, train, val, band, steps=60, chunks_per_step=128, eval_every=20,
                      seed=3)
    digests = []
    for i, surrogate in enumerate((first, second)):
        (tmp_path / str(i)).mkdir()
        digests.append(checkpoint.save_surrogate(surrogate, str(tmp_path / str(i) / "surrogate.pt"),
                                                 "cls", "m"))
    assert digests[0] == digests[1]


def test_strata_are_ranked_apart_and_one_stratum_changes_nothing(monkeypatch):
    """With a ``stratum`` key each step draws from one stratum (in turn) and validation averages
    the correlation within strata; a single stratum trains exactly as no stratum does."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    first = TASKS["cls"].surrogate()
    train = pretrain.prepare_batches(first, "cls", pretrain.synthetic_chunks("cls", 90, generator))
    val = pretrain.prepare_batches(first, "cls", pretrain.synthetic_chunks("cls", 60, generator))
    state = {key: value.clone() for key, value in first.state_dict().items()}
    band = TASKS["cls"].band
    pretrain.pretrain(first, train, val, band, steps=6, chunks_per_step=32, eval_every=3)
    second = TASKS["cls"].surrogate()
    second.load_state_dict(state)
    single = dict(train, stratum=torch.zeros(90, dtype=torch.long))
    pretrain.pretrain(second, single, dict(val, stratum=torch.zeros(60, dtype=torch.long)), band,
                      steps=6, chunks_per_step=32, eval_every=3)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key

    # Three strata of 30, 30 and 30 chunks: every step's batch lies in one, in turn.
    stratum = torch.arange(90) % 3
    seen = []
    real = pretrain.objective

    def recording(surrogate, batch, *args, **kwargs):
        seen.append(sorted(set(batch["stratum"].tolist())))
        return real(surrogate, batch, *args, **kwargs)

    monkeypatch.setattr(pretrain, "objective", recording)
    pretrain.pretrain(second, dict(train, stratum=stratum), val, None, steps=6,
                      chunks_per_step=32, eval_every=3)
    assert seen == [[0], [1], [2], [0], [1], [2]]

    # Validation within strata: two strata whose metrics live on different scales, each ranked
    # perfectly by the loss, but not across them.
    losses = pretrain.chunk_losses(second, val)
    metric = -losses.clone()
    metric[30:] += 100.0 + 3 * (losses[30:].max() - losses[:30].min()).abs()
    parted = dict(val, metric=metric, stratum=(torch.arange(60) >= 30).long())
    inner = pretrain.stratified_correlations(second, parted, None)
    assert inner["full"] == pytest.approx(1.0) and inner["band"] is None
    whole = pretrain.stratified_correlations(second, dict(parted, stratum=torch.zeros(
        60, dtype=torch.long)), None)
    assert whole["full"] < 0.99


def run_tool(args):
    return pretrain_command.main(args)


TINY = ["--train-chunks", "200", "--steps", "20", "--chunks-per-step", "64", "--eval-every", "10"]


def test_tool_writes_outputs_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    card = run_tool(["--task", "cls", "--out", str(out)] + TINY)
    for name in pretrain_command.OUTPUTS:
        assert (out / name).stat().st_size > 0
    assert card["sha256"] == checkpoint.sha256_file(out / "surrogate.pt")
    assert card["command"] == "reloss pretrain " + shlex.join(["--task", "cls", "--out", str(out)]
                                                              + TINY)
    assert set(card["results"]["held-out synthetic"]) == {"surrogate", "baseline"}
    assert "Spearman(-loss, accuracy)" in capsys.readouterr().out
    loaded = reloss.load_surrogate(str(out / "surrogate.pt"))
    assert loaded.task == "cls" and not any(p.requires_grad for p in loaded.parameters())

    before = checkpoint.sha256_file(out / "surrogate.pt")
    with pytest.raises(SystemExit):
        run_tool(["--task", "cls", "--out", str(out)] + TINY)
    assert "already holds surrogate.pt" in capsys.readouterr().err
    assert checkpoint.sha256_file(out / "surrogate.pt") == before
    again = run_tool(["--task", "cls", "--out", str(out), "--force"] + TINY)
    assert again["sha256"] == card["sha256"]  # same seed, same bytes


MACRO_F1 = '''
import torch

def macro_f1(logits, labels):
    predicted = logits.argmax(-1)
    classes = logits.shape[-1]
    scores = []
    for c in range(classes):
        tp = ((predicted == c) & (labels == c)).sum(-1).double()
        fp = ((predicted == c) & (labels != c)).sum(-1).double()
        fn = ((predicted != c) & (labels == c)).sum(-1).double()
        scores.append(2 * tp / (2 * tp + fp + fn).clamp_min(1))
    return torch.stack(scores, -1).mean(-1)

def one_value(logits, labels):
    return torch.tensor(0.5)
'''


def test_tool_learns_a_user_metric(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(MACRO_F1)
    monkeypatch.chdir(tmp_path)
    card = run_tool(["--task", "cls", "--metric", "my_metrics:macro_f1", "--out", "f1"] + TINY)
    assert card["metric"] == "my_metrics:macro_f1"
    assert card["results"]["held-out synthetic"]["surrogate"]["full"] > 0.5


@pytest.mark.parametrize("args, message", [
    (["--metric", "no_such_module:f"], "cannot import module 'no_such_module'"),
    (["--metric", "my_metrics:missing"], "module 'my_metrics' has no function 'missing'"),
    (["--metric", "my_metrics"], "expected module:function"),
    (["--metric", "my_metrics:one_value"], "one value per chunk"),
    (["--data", "absent.pt"], "'absent.pt': no such file"),
    (["--arch", "width=3"], "--arch: "),
    (["--arch", "type=PoseSurrogate"], "--arch: 'type' should be a 'cls' surrogate class "
                                       "(ClassificationSurrogate, ClassAwareSurrogate) but got "
                                       "'PoseSurrogate'"),
    (["--arch", "temperatures=[0]"], "--arch: 'temperatures' should be one or more numbers > 0"),
])
def test_tool_rejects_bad_arguments(tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "my_metrics.py").write_text(MACRO_F1)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        run_tool(["--task", "cls", "--out", "out"] + TINY + args)
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "surrogate.pt").exists()


def test_tool_learns_a_metric_from_a_file_path(tmp_path):
    (tmp_path / "my_metrics.py").write_text(MACRO_F1)
    spec = f"{tmp_path / 'my_metrics.py'}:macro_f1"
    card = run_tool(["--task", "cls", "--metric", spec, "--out", str(tmp_path / "f1")] + TINY)
    assert card["metric"] == spec


def test_relabel_adds_k_copies_of_each_training_chunk():
    task = TASKS["cls"]
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(3, 8, 5), torch.randint(5, (3, 8)), None) for _ in range(2)]
    for copies in (0, 1, 3):
        out = pretrain_command.relabelled(batches, copies, task, generator)
        assert len(out) == len(batches) * (copies + 1)
        assert all(a is b for a, b in zip(out[:2], batches, strict=True))
        for logits, labels, _ in out[2:]:
            assert labels.shape == (3, 8) and logits.shape == (3, 8, 5)


@pytest.mark.parametrize("args, message", [
    (["--task", "nat", "--relabel", "2"], "task 'nat' defines no relabelling"),
    (["--task", "cls", "--relabel", "-1"], "--relabel should be a count >= 0"),
])
def test_tool_rejects_bad_relabel(capsys, args, message):
    with pytest.raises(SystemExit):
        run_tool(args + ["--out", "x"])
    assert message in capsys.readouterr().err


def test_tool_rejects_unknown_task(capsys):
    with pytest.raises(SystemExit):
        run_tool(["--task", "detection", "--out", "x"])
    assert "invalid choice: 'detection'" in capsys.readouterr().err


def stored_cls(tmp_path, **changes):
    data = dict(task="cls", logits=torch.randn(40, 5), labels=torch.randint(5, (40,)),
                group=torch.arange(40) // 20)
    data.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        data.pop(key)
    path = tmp_path / "predictions.pt"
    torch.save(data, path)
    return str(path)


def test_stored_predictions_are_chunked_within_groups(tmp_path):
    path = stored_cls(tmp_path)
    batches = load_predictions(path, "cls", 8, torch.Generator().manual_seed(0))
    assert [b[0].shape for b in batches] == [(2, 8, 5), (2, 8, 5)]
    assert all(b[2] is None for b in batches)


@pytest.mark.parametrize("changes, message", [
    (dict(labels=None), r"missing field\(s\) 'labels' for task 'cls'"),
    (dict(labels=torch.randint(5, (39,))), r"field 'labels' should be shape \(40,\)"),
    (dict(labels=torch.full((40,), 5)), r"field 'labels' should be indices in \[0, 5\)"),
    (dict(logits=torch.full((40, 5), float("nan"))), r"field 'logits' should be finite"),
    (dict(logits=torch.randn(40)), r"field 'logits' should be a 2-D floating-point tensor"),
    (dict(task="pose"), r"missing field\(s\) 'heatmaps', 'target_heatmaps', 'target_weights'"),
    (dict(task="detection"), r"field 'task' should be one of"),
    (dict(group=torch.zeros(3)), r"field 'group' should be an integer tensor of shape \(40,\)"),
])
def test_stored_predictions_errors_name_file_and_field(tmp_path, changes, message):
    path = stored_cls(tmp_path, **changes)
    with pytest.raises(ValueError, match=message) as error:
        load_predictions(path, "cls", 8)
    assert str(error.value).startswith(path)


def test_shipped_checkpoints_are_verified(tmp_path):
    entries = checkpoint.shipped()
    assert set(entries) == {"cls", "cls-balanced", "cls-macro-f1", "pose", "nat", "qa"}
    for name, entry in entries.items():
        path = os.path.join(checkpoint.CHECKPOINT_DIR, entry["file"])
        assert checkpoint.sha256_file(path) == entry["sha256"]
        assert os.path.getsize(path) < 4 << 20
        surrogate = reloss.load_surrogate(name)
        assert surrogate.task == name.split("-")[0] and surrogate.sha256 == entry["sha256"]
        with open(os.path.join(checkpoint.CHECKPOINT_DIR, f"{name}.json"), encoding="utf-8") as f:
            card = json.load(f)
        assert card["sha256"] == entry["sha256"]
        assert card["command"].startswith(("reloss pretrain", "python tools/pretrain_surrogate.py",
                                           "python -m tools.pretrain_surrogate"))

    # A copy that was altered after its card was written is refused.
    for name in ("cls.pt", "cls.json"):
        shutil.copy(os.path.join(checkpoint.CHECKPOINT_DIR, name), tmp_path / name)
    assert reloss.load_surrogate(str(tmp_path / "cls.pt")).task == "cls"
    with open(tmp_path / "cls.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match=r"cls.pt: sha256 .* does not match .* recorded in .*cls"):
        reloss.load_surrogate(str(tmp_path / "cls.pt"))


def test_checkpoint_field_errors(tmp_path):
    surrogate = reloss.ClassificationSurrogate()
    path = str(tmp_path / "x.pt")
    checkpoint.save_surrogate(surrogate, path, "cls", "m")
    payload = torch.load(path, weights_only=True)

    def broken(**changes):
        torch.save({**payload, **changes}, path)
        return path

    with pytest.raises(ValueError, match=r"x.pt: field 'state_dict' does not match"):
        reloss.load_surrogate(broken(architecture=dict(type="ClassificationSurrogate",
                                                       knots=8)))
    with pytest.raises(ValueError, match=r"x.pt: field 'architecture' does not fit"):
        reloss.load_surrogate(broken(architecture=dict(type="ClassificationSurrogate", width=3)))
    with pytest.raises(ValueError, match=r"x.pt: field 'architecture' should name a 'cls' "
                                         r"surrogate class \(ClassificationSurrogate, "
                                         r"ClassAwareSurrogate\) but names 'PoseSurrogate'"):
        reloss.load_surrogate(broken(architecture=dict(type="PoseSurrogate")))
    with pytest.raises(ValueError, match=r"x.pt: field 'architecture' should be a dict with a "
                                         r"type among 'ClassificationSurrogate'"):
        reloss.load_surrogate(broken(architecture=dict(knots=8)))
    with pytest.raises(ValueError, match=r"x.pt: field 'format' should be 'reloss-surrogate'"):
        reloss.load_surrogate(broken(format="other"))
    with pytest.raises(ValueError, match=r"x.pt: sha256 .* does not match 0+ recorded in the sha"):
        reloss.load_surrogate(broken(), sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match=r"is neither a shipped surrogate \('cls'"):
        reloss.load_surrogate(str(tmp_path / "absent.pt"))
    with pytest.raises(FileExistsError, match="already exists"):
        checkpoint.save_surrogate(surrogate, path, "cls", "m")


QUALITY = {"cls": 300, "pose": 200, "nat": 1200}


@pytest.mark.parametrize("task", ["cls", pytest.param("pose", marks=pytest.mark.slow), "nat"])
def test_shipped_surrogate_beats_the_original_loss_on_fresh_chunks(task):
    """Fresh synthetic chunks (a seed the tool never used): higher Spearman than the loss it
    replaces on the whole range and by at least 0.05 in the late-training band; for 'cls' by at
    least 0.05 on the whole range and no lower in the band. (The shipped cls surrogate reads the
    cross-entropy alone, the design that trained best on the regime matrix; sharper temperatures
    rank better in the band but train worse under label noise: docs/matrix.md.) For 'nat' higher
    on both (by 0.008 and 0.02 when written): on these chunks, whose logits are noise around the
    output token, the expected n-gram counts add little to cross-entropy; its margin is on real
    NAT predictions (about 0.04 on both, docs/design.md), where it was pretrained."""
    surrogate = reloss.load_surrogate(task)
    generator = torch.Generator().manual_seed(12345)
    data = pretrain.prepare_batches(
        surrogate, task, pretrain.synthetic_chunks(task, QUALITY[task], generator))
    figures = pretrain.evaluate(surrogate, data, TASKS[task].band)
    ours, theirs = figures["surrogate"], figures["baseline"]
    if task == "cls":
        assert ours["full"] >= theirs["full"] + 0.05, figures
        assert ours["band"] >= theirs["band"], figures
    elif task == "nat":
        assert ours["full"] > theirs["full"], figures
        assert ours["band"] > theirs["band"], figures
    else:
        assert ours["full"] > theirs["full"], figures
        assert ours["band"] >= theirs["band"] + 0.05, figures


def test_shipped_classification_surrogate_ranks_a_real_model_as_cross_entropy_does(tmp_path):
    data, accuracy = digits_predictions.collect(seed=1)
    assert min(accuracy.values()) < 0.3 and max(accuracy.values()) > 0.9
    path = tmp_path / "digits.pt"
    torch.save(data, path)
    surrogate = reloss.load_surrogate("cls")
    batches = load_predictions(str(path), "cls", 128, torch.Generator().manual_seed(0))
    prepared = pretrain.prepare_batches(surrogate, "cls", batches)
    figures = pretrain.evaluate(surrogate, prepared, TASKS["cls"].band)
    # As well as cross-entropy, within 0.01 (a learned function of the cross-entropy alone ranks
    # a real model's predictions much as the cross-entropy does: 0.975 against 0.975 here).
    assert figures["surrogate"]["full"] >= figures["baseline"]["full"] - 0.01, figures
    assert figures["surrogate"]["band"] >= figures["baseline"]["band"] - 0.01, figures


def test_tool_learns_another_surrogate_class_of_the_task(tmp_path):
    """--arch type=CLASS picks one of the task's other surrogate forms; its card and checkpoint
    name that class, and the checkpoint loads into it."""
    card = run_tool(["--task", "qa", "--out", str(tmp_path / "risk"), "--steps", "2",
                     "--train-chunks", "32", "--chunks-per-step", "16", "--eval-every", "1",
                     "--arch", "type=QARiskSurrogate", "risk_weight=2"])
    assert card["architecture"] == dict(type="QARiskSurrogate", risk_weight=2.0)
    loaded = reloss.load_surrogate(str(tmp_path / "risk" / "surrogate.pt"))
    assert type(loaded).__name__ == "QARiskSurrogate"
