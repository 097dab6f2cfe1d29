import sys
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import rankdata, spearmanr
from torch.autograd import gradcheck

import reloss
from reloss import rank as rank_module

BACKENDS = ["pairwise", pytest.param("torchsort", marks=pytest.mark.skipif(
    not reloss.torchsort_available("cpu"), reason="torchsort is not installed"))]


def correlated(batch, n, seed=0, dtype=torch.float32, ties=False):
    generator = torch.Generator().manual_seed(seed)
    pred = torch.randn(batch, n, generator=generator, dtype=torch.float64)
    target = torch.linspace(0, 3, batch, dtype=torch.float64)[:, None] * pred
    target = target + torch.randn(batch, n, generator=generator, dtype=torch.float64)
    if ties:
        pred, target = pred.round(), target.round()
    return pred.to(dtype), target.to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_rank_gradcheck(backend):
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda v: reloss.soft_rank(v, 0.5, backend), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_spearman_gradcheck(backend):
    pred, target = correlated(3, 16, dtype=torch.float64)
    pred.requires_grad_()
    assert gradcheck(lambda v: reloss.soft_spearman(v, target, 0.5, backend), (pred,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_rank_sums_and_limits(backend):
    x = torch.randn(4, 50, dtype=torch.float64)
    ranks = reloss.soft_rank(x, backend=backend)
    n = x.shape[1]
    torch.testing.assert_close(ranks.sum(-1), torch.full((4,), n * (n + 1) / 2, dtype=x.dtype))
    # Well separated values get their exact ranks at a small strength.
    spaced = torch.randperm(n, dtype=torch.float64).unsqueeze(0)
    torch.testing.assert_close(reloss.soft_rank(spaced, 1e-3, backend), spaced + 1)


def test_soft_rank_ties_share_the_average_rank():
    x = torch.tensor([[3.0, 1.0, 3.0, 0.0]])
    torch.testing.assert_close(reloss.soft_rank(x, 1e-3, "pairwise"),
                               torch.tensor([[3.5, 2.0, 3.5, 1.0]]))


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_equals_scipy(ties):
    a, b = correlated(6, 40, seed=1, dtype=torch.float64, ties=ties)
    expected = [spearmanr(a[i], b[i]).statistic for i in range(6)]
    torch.testing.assert_close(reloss.spearman(a, b), torch.tensor(expected, dtype=torch.float64))
    # Along another dimension, in float32, and on integers.
    torch.testing.assert_close(reloss.spearman(a.T.float(), b.T.float(), dim=0),
                               torch.tensor(expected, dtype=torch.float32))
    ints = torch.randint(0, 4, (2, 3, 30), generator=torch.Generator().manual_seed(2))
    expected = [[spearmanr(ints[0, j], ints[1, j]).statistic for j in range(3)]]
    torch.testing.assert_close(reloss.spearman(ints[:1], ints[1:]),
                               torch.tensor(expected, dtype=torch.float32))


def test_exact_rank_equals_scipy_rankdata():
    x = torch.randint(0, 6, (3, 25, 4), generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(reloss.exact_rank(x, dim=1).numpy(), rankdata(x.numpy(), axis=1))


def test_spearman_of_a_constant_is_zero():
    a = torch.ones(2, 10)
    b = torch.randn(2, 10)
    torch.testing.assert_close(reloss.spearman(a, b), torch.zeros(2))
    torch.testing.assert_close(reloss.soft_spearman(b, a), torch.zeros(2))
    torch.testing.assert_close(reloss.soft_spearman(a, b), torch.zeros(2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_spearman_tends_to_exact(backend):
    pred, target = correlated(16, 256, ties=False)
    exact = reloss.spearman(pred, target)
    errors = [float((reloss.soft_spearman(pred, target, s, backend) - exact).abs().max())
              for s in (3.0, 0.3, 0.03, 0.003)]
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 1e-3, errors
    # The default strength is within 0.01 at n >= 256.
    assert float((reloss.soft_spearman(pred, target, backend=backend) - exact).abs().max()) <= 0.01


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_spearman_invariants(backend):
    pred, target = correlated(4, 64, dtype=torch.float64)
    rho = reloss.soft_spearman(pred, target, backend=backend)
    permutation = torch.randperm(64)
    torch.testing.assert_close(
        reloss.soft_spearman(pred[:, permutation], target[:, permutation], backend=backend), rho)
    torch.testing.assert_close(reloss.soft_spearman(1e-3 * pred + 7, target, backend=backend), rho)
    torch.testing.assert_close(reloss.soft_spearman(pred[0], target[0], backend=backend), rho[0])
    assert reloss.soft_spearman(pred[0], target[0], backend=backend).shape == ()


def test_soft_spearman_gradient_flows_to_pred_only():
    pred, target = correlated(2, 32)
    pred.requires_grad_()
    target.requires_grad_()
    reloss.soft_spearman(pred, target).sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dtypes(dtype, backend):
    pred, target = correlated(3, 128)
    reference = reloss.soft_spearman(pred, target, backend=backend)
    low = pred.to(dtype).requires_grad_()
    rho = reloss.soft_spearman(low, target, backend=backend)
    assert rho.dtype == dtype
    rho.sum().backward()
    assert low.grad.dtype == dtype
    torch.testing.assert_close(rho.float(), reference, atol=0.02, rtol=0)
    assert reloss.soft_rank(low.detach(), backend=backend).dtype == dtype


def test_auto_backend_choice_on_cpu():
    expected = "torchsort" if reloss.torchsort_available("cpu") else "pairwise"
    assert reloss.resolve_backend("auto", torch.zeros(2, 8)) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda():
    pred, target = correlated(8, 512)
    pred, target = pred.cuda(), target.cuda()
    assert reloss.resolve_backend("auto", pred) == "pairwise"
    rho = reloss.soft_spearman(pred, target)
    assert rho.device.type == "cuda"
    torch.testing.assert_close(rho.cpu(), reloss.soft_spearman(pred.cpu(), target.cpu()),
                               atol=0.01, rtol=0)


def test_missing_torchsort_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchsort", None)  # what importlib sees when it is absent
    monkeypatch.setattr(rank_module, "_warned", set())
    x = torch.randn(2, 16)
    with pytest.warns(RuntimeWarning, match="torchsort is not installed; using the 'pairwise'"):
        first = reloss.soft_rank(x, backend="torchsort")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = reloss.soft_rank(x, backend="auto")
    torch.testing.assert_close(first, reloss.soft_rank(x, backend="pairwise"))
    torch.testing.assert_close(second, first)


BAD_INPUTS = [
    (lambda: reloss.soft_rank(torch.randn(5)), ValueError,
     r"'x' should be a 2-D \(B, n\) tensor but got shape \(5,\)"),
    (lambda: reloss.soft_rank(torch.randn(2, 3, 4)), ValueError, r"'x' should be a 2-D"),
    (lambda: reloss.soft_rank(torch.arange(6).view(2, 3)), TypeError,
     r"'x' should be a floating-point tensor but got dtype torch.int64"),
    (lambda: reloss.soft_rank([[1.0, 2.0]]), TypeError,
     r"'x' should be a torch.Tensor but got list"),
    (lambda: reloss.soft_rank(torch.tensor([[1.0, float("nan")]])), ValueError,
     r"'x' should hold only finite values but got 1 NaN or Inf of 2 elements"),
    (lambda: reloss.soft_rank(torch.tensor([[1.0, float("inf")]])), ValueError,
     r"'x' should hold only finite values"),
    (lambda: reloss.soft_rank(torch.randn(3, 1)), ValueError,
     r"'x' should have n >= 2 \(size of dim -1\) but got n=1 in shape \(3, 1\)"),
    (lambda: reloss.soft_rank(torch.randn(2, 3), backend="diffsort"), ValueError,
     r"'backend' should be one of 'auto', 'torchsort', 'pairwise' but got 'diffsort'"),
    (lambda: reloss.soft_rank(torch.randn(2, 3), regularization_strength=0), ValueError,
     r"'regularization_strength' should be a positive finite number but got 0"),
    (lambda: reloss.soft_spearman(torch.randn(2, 3), torch.randn(2, 4)), ValueError,
     r"'pred' and 'target' should have the same shape but got \(2, 3\) and \(2, 4\)"),
    (lambda: reloss.soft_spearman(torch.randn(2, 3, 4), torch.randn(2, 3, 4)), ValueError,
     r"'pred' should be a 1-D \(n,\) or 2-D \(B, n\) tensor but got shape \(2, 3, 4\)"),
    (lambda: reloss.soft_spearman(torch.arange(4), torch.arange(4)), TypeError,
     r"'pred' should be a floating-point tensor but got dtype torch.int64"),
    (lambda: reloss.soft_spearman(torch.randn(4), torch.tensor([0, 1, float("nan"), 2])),
     ValueError, r"'target' should hold only finite values"),
    (lambda: reloss.soft_spearman(torch.randn(2, 1), torch.randn(2, 1)), ValueError,
     r"'pred' should have n >= 2"),
    (lambda: reloss.soft_spearman(torch.randn(4), torch.randn(4), backend="fast"), ValueError,
     r"'backend' should be one of"),
    (lambda: reloss.spearman(torch.randn(3), torch.randn(4)), ValueError,
     r"'a' and 'b' should have the same shape"),
    (lambda: reloss.spearman(torch.randn(3, 1), torch.randn(3, 1)), ValueError,
     r"'a' should have n >= 2"),
    (lambda: reloss.spearman(torch.tensor([1.0, float("inf")]), torch.ones(2)), ValueError,
     r"'a' should hold only finite values"),
    (lambda: reloss.spearman(torch.tensor(1.0), torch.tensor(2.0)), ValueError,
     r"'a' should have at least 1 dimension but got a 0-D tensor"),
]


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
