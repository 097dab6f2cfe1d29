"""tools/benchmarks/step.py --task nat: fairseq's NAT model with nat_loss and with reloss_nat, built
through fairseq's own APIs from the same weights, on a translation_lev batch (shrunk here)."""
import argparse

import pytest
import torch

from tools.benchmarks import step as benchmark_step

SMALL = ["--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
         "--decoder-ffn-embed-dim", "64", "--encoder-layers", "1", "--decoder-layers", "1",
         "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]


@pytest.fixture
def small_nat(monkeypatch):
    monkeypatch.setattr(benchmark_step, "NAT_VOCABULARY", 64)
    monkeypatch.setattr(benchmark_step, "NAT_FLAGS", [*benchmark_step.NAT_FLAGS, *SMALL])


def test_nat_case_builds_both_criteria_from_the_same_weights(small_nat):
    from fairseq.criterions.nat_loss import LabelSmoothedDualImitationCriterion

    from reloss.fairseq import ReLossNATCriterion

    args = argparse.Namespace(batch=3, tokens=5)
    models, forward, title = benchmark_step.nat_case(args, torch.device("cpu"))
    (base, base_loss), (ours, our_loss) = models["nat_loss"], models["reloss_nat"]
    assert type(base_loss) is LabelSmoothedDualImitationCriterion
    assert isinstance(our_loss, ReLossNATCriterion)
    assert base_loss.label_smoothing == our_loss.label_smoothing == 0.1
    assert type(base).__name__ == "NATransformerModel" and base.args.apply_bert_init
    assert base.encoder.embed_tokens is base.decoder.embed_tokens  # --share-all-embeddings
    theirs = ours.state_dict()
    for key, value in base.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    assert "d 32, 1+1 layers" in title and "64-entry" in title
    for entry in models.values():
        loss = forward(entry)
        assert loss.dim() == 0 and torch.isfinite(loss)


def test_nat_step_benchmark_runs(small_nat, capsys):
    result = benchmark_step.main(["--task", "nat", "--steps", "1", "--warmup", "0", "--batch", "2",
                                  "--tokens", "6", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert set(result["medians"]) == {"nat_loss", "reloss_nat"}
    assert result["ratio"] > 0 and "ratio reloss_nat / nat_loss" in printed
    assert "batch 2 of 6 source / 6 target tokens" in printed
