"""The metrics of Chinese reading comprehension on answer strings, character-level: CMRC 2018's
F1 and exact match, DuReader's ROUGE-L and BLEU-4, and :func:`answer_scores`, the four in
percent. Plain Python; imports no toolkit. The answer strings come from a QA model's logits
through :mod:`reloss.squad`.
"""
from __future__ import annotations

import math
import unicodedata
from collections import Counter


def _is_cjk(char):
    return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf"


def _is_punctuation(char):
    return unicodedata.category(char).startswith(("P", "S"))


def cmrc_tokens(text: str) -> list[str]:
    """CMRC 2018's segmentation for F1: lower case, punctuation and symbols removed, each CJK
    character a token, other text split on white space (the official script uses nltk's word
    tokenizer there; for Chinese answers the two agree)."""
    tokens, word = [], []
    for char in str(text).lower().strip():
        if _is_punctuation(char) or char.isspace() or _is_cjk(char):
            if word:
                tokens.append("".join(word))
                word = []
            if _is_cjk(char):
                tokens.append(char)
        else:
            word.append(char)
    if word:
        tokens.append("".join(word))
    return tokens


def _longest_common_substring(a, b):
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def _longest_common_subsequence(a, b):
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _check_answers(prediction, references):
    if not isinstance(prediction, str):
        raise TypeError(f"'prediction' should be a str but got {type(prediction).__name__}")
    if isinstance(references, str) or not references or not all(
            isinstance(r, str) for r in references):
        raise ValueError(f"'references' should be a non-empty list of str answers but got "
                         f"{references!r}")


def cmrc_f1(prediction: str, references: list[str]) -> float:
    """CMRC 2018 F1 of one answer: from the longest common substring of the token lists
    (:func:`cmrc_tokens`), the best over the reference answers; in [0, 1]."""
    _check_answers(prediction, references)
    predicted, best = cmrc_tokens(prediction), 0.0
    for reference in references:
        gold = cmrc_tokens(reference)
        common = _longest_common_substring(gold, predicted)
        if common:
            precision, recall = common / len(predicted), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def cmrc_exact_match(prediction: str, references: list[str]) -> float:
    """CMRC 2018 exact match: 1.0 if the answer equals a reference once lower-cased and stripped
    of punctuation, symbols and white space, else 0.0."""
    _check_answers(prediction, references)
    predicted = "".join(cmrc_tokens(prediction))
    return float(any(predicted == "".join(cmrc_tokens(r)) for r in references))


def dureader_tokens(text: str) -> list[str]:
    """DuReader's normalisation: the answer's characters, white space dropped."""
    return [char for char in str(text) if not char.isspace()]


def rouge_l(prediction: str, references: list[str], beta: float = 1.2) -> float:
    """DuReader's ROUGE-L of one answer, on characters: the longest common subsequence gives a
    precision and a recall per reference; the best of each over the references combine as
    ``(1 + beta^2) P R / (R + beta^2 P)``. In [0, 1]."""
    _check_answers(prediction, references)
    predicted = dureader_tokens(prediction)
    if not predicted:
        return 0.0
    precision = recall = 0.0
    for reference in references:
        gold = dureader_tokens(reference)
        common = _longest_common_subsequence(gold, predicted)
        precision = max(precision, common / len(predicted))
        recall = max(recall, common / len(gold) if gold else 0.0)
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)


def corpus_bleu4(predictions: list[str], references: list[list[str]]) -> float:
    """DuReader's BLEU-4, on characters, over a whole set of answers (coco-caption's scorer):
    n-gram counts clipped by their largest count in any reference, summed over answers, the
    geometric mean of the 1- to 4-gram precisions, no smoothing, and a brevity penalty
    ``exp(1 - r / c)`` from the total answer length c and the total of each answer's closest
    reference length r (the shorter on a tie). In [0, 1]."""
    if len(predictions) != len(references):
        raise ValueError(f"'predictions' and 'references' should have the same length but got "
                         f"{len(predictions)} and {len(references)}")
    matched, total = [0] * 4, [0] * 4
    candidate_length = reference_length = 0
    for prediction, answers in zip(predictions, references, strict=True):
        _check_answers(prediction, answers)
        predicted = dureader_tokens(prediction)
        golds = [dureader_tokens(a) for a in answers]
        candidate_length += len(predicted)
        reference_length += min((abs(len(g) - len(predicted)), len(g)) for g in golds)[1]
        for n in range(1, 5):
            counts = Counter(tuple(predicted[i:i + n]) for i in range(len(predicted) - n + 1))
            most = Counter()
            for gold in golds:
                most |= Counter(tuple(gold[i:i + n]) for i in range(len(gold) - n + 1))
            matched[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            total[n - 1] += max(len(predicted) - n + 1, 0)
    if min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total, strict=True)) / 4
    brevity = min(0.0, 1 - reference_length / candidate_length)
    return math.exp(log_precision + brevity)


def answer_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """The four figures of a set of answers, in percent: CMRC 2018 EM and F1, DuReader ROUGE-L
    and BLEU-4 (the first three averaged over questions, BLEU-4 over the corpus)."""
    if not predictions or len(predictions) != len(references):
        raise ValueError(f"'predictions' and 'references' should be non-empty and of the same "
                         f"length but got {len(predictions)} and {len(references)}")
    count = len(predictions)
    pairs = list(zip(predictions, references, strict=True))
    return {"EM": 100 * sum(cmrc_exact_match(p, r) for p, r in pairs) / count,
            "F1": 100 * sum(cmrc_f1(p, r) for p, r in pairs) / count,
            "ROUGE-L": 100 * sum(rouge_l(p, r) for p, r in pairs) / count,
            "BLEU-4": 100 * corpus_bleu4(predictions, references)}
