import pytest
import torch

import reloss
from tools.benchmarks.nat_ngram_share import main, ngram_share


def _batch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, 11, generator=generator)
    targets = torch.randint(0, 11, (4, 7), generator=generator)
    weights = torch.ones(4, 7)
    weights[0, 5:] = 0
    return logits, targets, weights


def test_share_follows_the_weights_and_leaves_the_surrogate_unchanged():
    logits, targets, weights = _batch()
    strong = reloss.SequenceSurrogate(ngrams=2, ngram_weight=5.0)
    faint = reloss.SequenceSurrogate(ngrams=2, ngram_weight=1e-4)
    before = strong.theta.detach().clone()
    high, low = ngram_share(strong, logits, targets, weights), ngram_share(faint, logits, targets,
                                                                           weights)
    assert 0 < low < 1e-3 < high < 1
    assert torch.equal(strong.theta.detach(), before)


def test_token_level_surrogate_is_refused():
    logits, targets, weights = _batch()
    with pytest.raises(ValueError, match="'surrogate' should be a sentence-level"):
        ngram_share(reloss.TokenSequenceSurrogate(), logits, targets, weights)


def test_cli_prints_a_share_per_snapshot(tmp_path, capsys):
    logits, targets, weights = _batch()
    path = tmp_path / "preds.pt"
    torch.save(dict(task="nat", logits=logits, targets=targets, target_weights=weights,
                    group=torch.tensor([0, 0, 1, 1])), path)
    main([str(path), "--sentences", "2"])
    out = capsys.readouterr().out
    assert "per snapshot:" in out
    assert len(out.split("per snapshot:")[1].splitlines()[0].split()) == 2
    with pytest.raises(SystemExit):
        main([str(path), "--sentences", "0"])
