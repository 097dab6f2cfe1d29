"""ReLossQA and ReLossQATrainer with a real transformers BertForQuestionAnswering (a tiny one,
from a config, with a generated character vocabulary) on generated SQuAD-format data."""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    BertForQuestionAnswering,
    BertTokenizerFast,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

import reloss  # noqa: E402
from reloss import squad  # noqa: E402
from reloss.transformers import ReLossQA, ReLossQATrainer  # noqa: E402
from tools.benchmarks import qa_proxy  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny BERT QA model folder (seed 0, no dropout) and generated training features."""
    folder = str(tmp_path_factory.mktemp("tiny_bert"))
    qa_proxy.write_tiny_bert(folder, seed=0)
    model = BertForQuestionAnswering.from_pretrained(folder, hidden_dropout_prob=0.0,
                                                     attention_probs_dropout_prob=0.0)
    model.save_pretrained(folder)
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    features = squad.train_features(qa_proxy.generate(48, seed=1), tokenizer, 64, 16)
    return folder, features


def batch(features, count=8):
    return default_data_collator(features[:count])


# The plain loss.

def test_loss_is_the_surrogate_on_stacked_logits_and_ignores_positions_past_the_end():
    torch.manual_seed(0)
    loss_fn = ReLossQA(ce_weight=0.0)
    start, end = torch.randn(5, 30), torch.randn(5, 30)
    positions = torch.tensor([[3, 5], [0, 0], [29, 29], [30, 31], [-4, 2]])
    values = loss_fn(start, end, positions[:, 0], positions[:, 1], reduction="none")
    bare = reloss.load_surrogate("qa")
    clamped = positions.clamp(0, 30)
    expected = bare(torch.stack([start, end], 1), clamped.clamp(max=29), reduction="none")
    torch.testing.assert_close(values[[0, 1, 2, 4]], expected[[0, 1, 2, 4]])
    assert float(values[3]) == 0.0  # both positions past the end: ignored, as the default loss
    torch.testing.assert_close(loss_fn(start, end, positions[:, 0], positions[:, 1]),
                               values.sum() / 4)
    torch.testing.assert_close(loss_fn(start, end, positions[:, 0], positions[:, 1], "sum"),
                               values.sum())
    assert float(ReLossQA.count(positions[:, 0], positions[:, 1], 30)) == 4


def test_ce_weight_adds_the_default_qa_loss():
    torch.manual_seed(1)
    start, end = torch.randn(6, 20), torch.randn(6, 20)
    s, e = torch.randint(20, (6,)), torch.randint(20, (6,))
    ce = (torch.nn.functional.cross_entropy(start, s) + torch.nn.functional.cross_entropy(end, e))
    alone = ReLossQA(ce_weight=0.0)(start, end, s, e)
    mixed = ReLossQA(ce_weight=0.5, loss_weight=2.0)(start, end, s, e)
    torch.testing.assert_close(mixed, 2.0 * (alone + 0.5 * ce / 2))


def test_gradient_reaches_the_logits_and_the_surrogate_stays_outside():
    loss_fn = ReLossQA()
    start = torch.randn(4, 16, requires_grad=True)
    end = torch.randn(4, 16, requires_grad=True)
    loss_fn(start, end, torch.tensor([1, 2, 3, 4]), torch.tensor([[2], [2], [5], [4]])).backward()
    assert float(start.grad.abs().sum()) > 0 and float(end.grad.abs().sum()) > 0
    assert list(loss_fn.parameters()) == [] and loss_fn.state_dict() == {}
    assert not any(p.requires_grad for p in loss_fn.surrogate.parameters())


@pytest.mark.parametrize("call, error, message", [
    (lambda f: f(torch.randn(4, 9), torch.randn(4, 8), torch.zeros(4, dtype=torch.long),
                 torch.zeros(4, dtype=torch.long)),
     ValueError, r"'start_logits' and 'end_logits' should have the same \(N, L\) shape but got "
                 r"\(4, 9\) and \(4, 8\)"),
    (lambda f: f(torch.randn(4), torch.randn(4), torch.zeros(4, dtype=torch.long),
                 torch.zeros(4, dtype=torch.long)),
     ValueError, r"'start_logits' should be a 2-D \(N, L\) tensor but got shape \(4,\)"),
    (lambda f: f(torch.zeros(4, 9, dtype=torch.long), torch.randn(4, 9),
                 torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)),
     TypeError, "'start_logits' should be a floating-point tensor but got dtype torch.int64"),
    (lambda f: f(torch.randn(4, 9), torch.randn(4, 9), torch.zeros(4),
                 torch.zeros(4, dtype=torch.long)),
     TypeError, r"'start_positions' should be \(N,\) integer token indices but got dtype "
                r"torch.float32"),
    (lambda f: f(torch.randn(4, 9), torch.randn(4, 9), torch.zeros(4, dtype=torch.long),
                 torch.zeros(4, dtype=torch.bool)),
     TypeError, "'end_positions' should be .* but got a torch.bool tensor"),
    (lambda f: f(torch.randn(4, 9), torch.randn(4, 9), torch.zeros(3, dtype=torch.long),
                 torch.zeros(4, dtype=torch.long)),
     ValueError, r"'start_positions' should be \(N,\) = \(4,\) token indices but got shape "
                 r"\(3,\)"),
    (lambda f: f(torch.randn(4, 9), torch.randn(4, 9), [0, 1, 2, 3],
                 torch.zeros(4, dtype=torch.long)),
     TypeError, "'start_positions' should be a torch.Tensor but got list"),
    (lambda f: f(torch.randn(4, 9), torch.randn(4, 9), torch.zeros(4, dtype=torch.long),
                 torch.zeros(4, dtype=torch.long), "avg"),
     ValueError, "'reduction' should be one of"),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call(ReLossQA())


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(checkpoint="cls"), ValueError,
     r"'checkpoint' should be a extractive question answering \('qa'\) surrogate but 'cls' is "
     r"a 'cls' one"),
    (dict(checkpoint=3), TypeError, "'checkpoint' should be a shipped surrogate name or a path"),
    (dict(ce_weight=-1.0), ValueError, "'ce_weight' should be a finite number >= 0 but got -1.0"),
    (dict(loss_weight=float("nan")), ValueError, "'loss_weight' should be a finite number"),
])
def test_bad_options_name_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        ReLossQA(**kwargs)


def test_nan_logits_are_reported():
    start = torch.randn(2, 9)
    start[0, 3] = float("nan")
    with pytest.raises(ValueError, match="'start_logits' and 'end_logits' should hold only "
                                         "finite values"):
        ReLossQA()(start, torch.randn(2, 9), torch.tensor([1, 2]), torch.tensor([1, 2]))


# The Trainer.

def training_args(out, **kwargs):
    settings = dict(output_dir=str(out), per_device_train_batch_size=8, max_steps=4,
                    learning_rate=1e-3, report_to="none", save_strategy="no", logging_steps=1,
                    use_cpu=True, disable_tqdm=True, seed=0, data_seed=0,
                    dataloader_num_workers=0)
    return TrainingArguments(**{**settings, **kwargs})


def test_trainer_needs_positions_and_a_reloss(tiny, tmp_path):
    folder, features = tiny
    model = BertForQuestionAnswering.from_pretrained(folder)
    with pytest.raises(TypeError, match="'reloss' should be a ReLossQA or None but got str"):
        ReLossQATrainer(model=model, args=training_args(tmp_path), reloss="qa")
    trainer = ReLossQATrainer(model=model, args=training_args(tmp_path))
    inputs = batch(features)
    del inputs["end_positions"]
    with pytest.raises(ValueError, match="ReLossQATrainer needs 'end_positions' in every batch"):
        trainer.compute_loss(model, inputs)


def test_a_trainer_without_loss_scaling_control_is_refused(tiny, tmp_path, monkeypatch):
    """A transformers whose Trainer cannot be told the loss is already scaled for gradient
    accumulation would scale it twice: construction fails instead, naming what is missing."""
    monkeypatch.delattr(Trainer, "loss_is_scaled_for_ga")
    model = BertForQuestionAnswering.from_pretrained(tiny[0])
    with pytest.raises(ImportError, match=r"needs a transformers Trainer with "
                                          r"loss_is_scaled_for_ga \(transformers >= 5.24 is "
                                          r"tested\) .* a second time"):
        ReLossQATrainer(model=model, args=training_args(tmp_path))


def test_compute_loss_is_relossqa_on_the_models_logits(tiny, tmp_path):
    folder, features = tiny
    model = BertForQuestionAnswering.from_pretrained(folder).eval()
    trainer = ReLossQATrainer(model=model, args=training_args(tmp_path))
    inputs = batch(features)
    loss, outputs = trainer.compute_loss(model, dict(inputs), return_outputs=True)
    assert "loss" not in outputs  # the model computed no loss of its own
    expected = ReLossQA()(outputs.start_logits, outputs.end_logits, inputs["start_positions"],
                          inputs["end_positions"])
    torch.testing.assert_close(loss, expected)
    # With a count of the accumulated batch's questions: the sum over this one, divided by it.
    scaled = trainer.compute_loss(model, dict(inputs), num_items_in_batch=torch.tensor(16))
    torch.testing.assert_close(scaled, expected * 8 / 16)


@pytest.mark.slow
def test_trainer_trains_and_keeps_the_surrogate_out_of_the_model(tiny, tmp_path):
    folder, features = tiny
    model = BertForQuestionAnswering.from_pretrained(folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = ReLossQATrainer(model=model, args=training_args(tmp_path, max_steps=6),
                              train_dataset=features, data_collator=default_data_collator)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 6 and all(map(torch.isfinite, torch.tensor(losses)))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(model.state_dict()) == set(before)  # nothing of the surrogate in the model
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = BertForQuestionAnswering.from_pretrained(str(tmp_path / "saved"))
    assert set(reloaded.state_dict()) == set(before)
    shipped = reloss.load_surrogate("qa").state_dict()
    assert all(torch.equal(trainer.reloss.surrogate.state_dict()[k], v)
               for k, v in shipped.items())  # frozen: training did not move it


@pytest.mark.slow
@pytest.mark.parametrize("trainer_class", [ReLossQATrainer, Trainer])
def test_gradient_accumulation_does_not_change_training(tiny, tmp_path, trainer_class):
    """Batches of 8 against micro-batches of 4 accumulated twice: the same logged losses and the
    same weights, also where the micro-batches hold different numbers of questions that count
    (the Trainer row: the same holds for the default loss on full batches)."""
    folder, features = tiny
    if trainer_class is ReLossQATrainer:  # some questions ignored: uneven micro-batches
        features = [dict(f, start_positions=64, end_positions=64) if i % 5 == 1 else f
                    for i, f in enumerate(features)]
    runs = []
    for size, steps in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        model = BertForQuestionAnswering.from_pretrained(folder)
        # SGD: Adam divides by the gradient's size, which magnifies rounding in tiny gradients.
        args = training_args(tmp_path / f"{size}", per_device_train_batch_size=size,
                             gradient_accumulation_steps=steps, max_steps=3, optim="sgd",
                             learning_rate=0.1)
        trainer = trainer_class(model=model, args=args, train_dataset=features,
                                data_collator=default_data_collator)
        trainer.train()
        runs.append(([e["loss"] for e in trainer.state.log_history if "loss" in e],
                     model.state_dict()))
    (losses_a, weights_a), (losses_b, weights_b) = runs
    assert losses_a == pytest.approx(losses_b, rel=1e-4)
    for key, value in weights_a.items():
        torch.testing.assert_close(weights_b[key], value, rtol=1e-4, atol=1e-5)


DDP_SCRIPT = """
import os, sys, torch
from transformers import BertForQuestionAnswering, TrainingArguments, default_data_collator
from reloss import squad
from reloss.transformers import ReLossQATrainer
from tools.benchmarks import qa_proxy
from transformers import BertTokenizerFast

folder, out, steps, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
torch.set_num_threads(1)
tokenizer = BertTokenizerFast.from_pretrained(folder)
features = squad.train_features(qa_proxy.generate(64, seed=1), tokenizer, 64, 16)
model = BertForQuestionAnswering.from_pretrained(folder)
args = TrainingArguments(output_dir=out, per_device_train_batch_size=4, max_steps=steps,
                         learning_rate=1e-3, report_to="none", save_strategy="steps",
                         save_steps=2, logging_steps=1, use_cpu=True, disable_tqdm=True, seed=0,
                         dataloader_num_workers=0)
trainer = ReLossQATrainer(model=model, args=args, train_dataset=features,
                          data_collator=default_data_collator)
trainer.train(resume_from_checkpoint=True if resume else None)
rank = int(os.environ["RANK"])
torch.save(dict(surrogate=trainer.reloss.surrogate.state_dict(),
                model=trainer.model.state_dict(), world=trainer.args.world_size,
                step=trainer.state.global_step,
                losses=[e["loss"] for e in trainer.state.log_history if "loss" in e]),
           os.path.join(out, f"rank{rank}_{steps}.pt"))
"""


@pytest.mark.slow
def test_torchrun_two_processes_train_with_identical_surrogates_and_resume(tiny, tmp_path):
    folder, _ = tiny
    script = tmp_path / "ddp_qa.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    for steps, resume in ((2, "0"), (4, "1")):
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
             "--master_port", "29531", str(script), folder, str(out), str(steps), resume],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    shipped = reloss.load_surrogate("qa").state_dict()
    states = [torch.load(out / f"rank{rank}_4.pt", weights_only=True) for rank in (0, 1)]
    for state in states:
        assert state["world"] == 2 and state["step"] == 4
        assert all(torch.equal(state["surrogate"][k], v) for k, v in shipped.items())
    # DDP kept the replicas identical, through the resume from checkpoint-2.
    for key, value in states[0]["model"].items():
        assert torch.equal(states[1]["model"][key], value), key
    assert os.path.isdir(out / "checkpoint-2") and os.path.isdir(out / "checkpoint-4")
    first = torch.load(out / "rank0_2.pt", weights_only=True)
    # The second launch resumed from checkpoint-2: its history holds the first launch's losses.
    assert len(first["losses"]) == 2 and states[0]["losses"][:2] == first["losses"]
    assert len(states[0]["losses"]) == 4
