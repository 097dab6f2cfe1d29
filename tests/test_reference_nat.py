import pytest
import sacrebleu
import torch

from tools.benchmarks.reference import nat


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
    with pytest.raises(ValueError, match=r"'regime' should be one of \[.*'default'.*\] but got "
                                         r"'noisy'"):
        nat.run("noisy", nat.original_loss, seed=0, quick=True)


def test_second_pair_differs_and_reorders_further():
    (source, target), _ = nat.data("b")
    pair = nat.PAIRS["b"]
    assert int(target.max()) < pair.vocab and pair.vocab > nat.VOCAB
    ratio_a = ((nat.data("a")[0][1] != nat.PAD).sum() / (nat.data("a")[0][0] != nat.PAD).sum())
    ratio_b = (target != nat.PAD).sum() / (source != nat.PAD).sum()
    assert float(ratio_b) > float(ratio_a) + 0.03
    kind, phrases = nat._language(torch.Generator().manual_seed(pair.seed), pair)
    modifier = kind.index(1)
    plain = [w for w, k in enumerate(kind) if k == 0 and phrases[w][0]][:2]
    # A modifier's phrase moves behind two plain words' phrases (one in pair a).
    assert nat._translate([modifier, *plain], kind, phrases, reach=2) == (
        phrases[plain[0]][0] + phrases[plain[1]][0] + phrases[modifier][0])
    assert nat._translate([modifier, *plain], kind, phrases, reach=1) == (
        phrases[plain[0]][0] + phrases[modifier][0] + phrases[plain[1]][0])


def test_stored_predictions_along_training_load_for_pretraining(tmp_path):
    from reloss.predictions import load_predictions

    path = tmp_path / "nat.pt"
    finals = nat.store_predictions(str(path), nat.original_loss, [0], "b-small", count=6,
                                   quick=True)
    assert len(finals) == 1 and finals[0] > nat.CHANCE
    groups = load_predictions(str(path), "nat", 2, torch.Generator().manual_seed(0))
    assert len(groups) == 10  # a snapshot at every tenth of training, 3 chunks of 2 sentences
    logits, target, weight = groups[0]
    assert logits.shape[:2] == (3, 2) and logits.shape[-1] == nat.PAIRS["b"].vocab
    assert logits.shape[:3] == target.shape == weight.shape
    assert bool(((target == nat.PAD) == (weight == 0)).all())
