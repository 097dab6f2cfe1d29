import pytest
import sacrebleu
import torch

from tools.reference import nat


def test_corpus_bleu_matches_sacrebleu():
    generator = torch.Generator().manual_seed(0)
    for keep in (0.3, 0.6, 0.9):
        lengths = torch.randint(1, 20, (40,), generator=generator)
        reference = torch.randint(4, 12, (40, 30), generator=generator)
        hypothesis = torch.where(torch.rand(40, 30, generator=generator) < keep, reference,
                                 torch.randint(4, 12, (40, 30), generator=generator))
        hyp_lengths = (lengths + torch.randint(-3, 4, (40,), generator=generator)).clamp(1, 30)
        reference = reference.masked_fill(torch.arange(30) >= lengths[:, None], nat.PAD)
        hypothesis = hypothesis.masked_fill(torch.arange(30) >= hyp_lengths[:, None], nat.PAD)

        def text(rows):
            return [" ".join(str(t) for t in row if t != nat.PAD) for row in rows.tolist()]

        expected = sacrebleu.corpus_bleu(text(hypothesis), [text(reference)], tokenize="none")
        assert nat.corpus_bleu(hypothesis, reference) == pytest.approx(expected.score, abs=1e-9)


def test_corpus_is_fixed_and_changes_length_and_order():
    (source, target), (test_source, test_target) = nat.data()
    assert source.shape[0] == nat.TRAIN_PAIRS and test_source.shape[0] == nat.TEST_PAIRS
    assert int(source.min()) >= nat.PAD and int(target.max()) < nat.VOCAB
    source_lengths, target_lengths = (source != nat.PAD).sum(-1), (target != nat.PAD).sum(-1)
    assert float((source_lengths != target_lengths).float().mean()) > 0.5
    kind, phrases = nat._language(torch.Generator().manual_seed(nat.DATA_SEED))
    modifier, plain = kind.index(1), kind.index(0)
    assert nat._translate([modifier, plain], kind, phrases) == phrases[plain][0] + phrases[
        modifier][0]


def test_uniform_copy_spans_the_source():
    index = nat.uniform_copy(torch.tensor([4, 6]), torch.tensor([7, 3]), 7)
    assert index[0].tolist() == [0, 0, 1, 2, 2, 2, 3]  # round half to even
    assert index[1, :3].tolist() == [0, 2, 5] and int(index[1].max()) == 5


def test_timing_inputs_shape():
    logits, target, weight = nat.timing_inputs(torch.Generator().manual_seed(0))
    assert logits.shape == (32, 32, 32000) and target.shape == weight.shape == (32, 32)
    assert bool((target[weight == 0] == nat.PAD).all())


def test_quick_run_trains_with_cross_entropy():
    out = nat.run("default", nat.original_loss, seed=0, quick=True)
    assert [fraction for fraction, _ in out["curve"]] == pytest.approx(
        [k / 10 for k in range(1, 11)])
    assert out["final"] > 5.0 and out["final"] > nat.CHANCE


def test_unknown_regime_is_named():
    with pytest.raises(ValueError, match=r"'regime' should be one of \['default'\] but got"):
        nat.run("noisy", nat.original_loss, seed=0, quick=True)
