"""SQuAD-format reading comprehension for transformers' QA models (CMRC 2018 and DuReader ship
in, or convert to, this format): examples from the JSON file, token features with a sliding
window, and answer strings from the models' start and end logits.

Features follow transformers' ``run_qa`` example: the question first, the passage second and
truncated in windows of ``max_length`` tokens overlapping by ``stride``; a window that does not
hold the whole answer is labelled with the [CLS] token (position 0) for training. Answers are
decoded per window by :func:`reloss.tasks.qa.best_spans` (n-best starts and ends, end >= start,
at most ``max_answer_length`` tokens, both inside the passage) and the best-scoring window of a
question gives its answer text. Needs a fast tokenizer (offset mappings); imports no toolkit.
"""
from __future__ import annotations

import json
import os

import torch

from .tasks.qa import MAX_ANSWER_LENGTH, N_BEST, best_spans


def read_squad(path: str | os.PathLike) -> list[dict]:
    """One dict per question: ``id``, ``question``, ``context``, ``answers`` (the reference
    texts) and ``answer_starts`` (their character offsets in the context, -1 where unknown)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: expected SQuAD-format JSON, a dict with a 'data' list of "
                         f"articles, but got {type(data).__name__}")
    examples = []
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for question in paragraph["qas"]:
                answers = question.get("answers", [])
                examples.append(dict(
                    id=str(question["id"]), question=question["question"], context=context,
                    answers=[a["text"] for a in answers],
                    answer_starts=[int(a.get("answer_start", -1)) for a in answers]))
    return examples


def write_squad(path: str | os.PathLike, examples: list[dict]) -> None:
    """Examples (as :func:`read_squad` returns them) as a SQuAD-format JSON file, one article a
    context."""
    paragraphs = {}
    for e in examples:
        paragraphs.setdefault(e["context"], []).append(dict(
            id=e["id"], question=e["question"],
            answers=[dict(text=t, answer_start=s)
                     for t, s in zip(e["answers"], e["answer_starts"], strict=True)]))
    data = [dict(title=str(i), paragraphs=[dict(context=c, qas=q)])
            for i, (c, q) in enumerate(paragraphs.items())]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dict(version="1.1", data=data), f, ensure_ascii=False)


def _answer_span(example):
    """Character (start, end) of the first reference found in the context, or None."""
    for text, start in zip(example["answers"], example["answer_starts"], strict=True):
        if not (0 <= start and example["context"][start:start + len(text)] == text):
            start = example["context"].find(text) if text else -1
        if start >= 0 and text:
            return start, start + len(text)
    return None


def _windows(examples, tokenizer, max_length, stride):
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"'tokenizer' should be a fast tokenizer (offset mappings) but got "
                        f"{type(tokenizer).__name__}")
    return tokenizer([e["question"].lstrip() for e in examples],
                     [e["context"] for e in examples], truncation="only_second",
                     max_length=max_length, stride=stride, return_overflowing_tokens=True,
                     return_offsets_mapping=True, padding="max_length")


def _inputs(encoded, i):
    return {key: encoded[key][i] for key in ("input_ids", "token_type_ids", "attention_mask")
            if key in encoded}


def train_features(examples: list[dict], tokenizer, max_length: int = 384,
                   stride: int = 128) -> list[dict]:
    """Token windows with ``start_positions`` and ``end_positions`` (token indices of the
    answer, or 0, the [CLS] token, where the window does not hold it), for ``Trainer``."""
    encoded = _windows(examples, tokenizer, max_length, stride)
    features = []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        example = examples[encoded["overflow_to_sample_mapping"][i]]
        sequence = encoded.sequence_ids(i)
        passage = [t for t, s in enumerate(sequence) if s == 1]
        start = end = 0
        span = _answer_span(example)
        if span is not None and passage and offsets[passage[0]][0] <= span[0] \
                and offsets[passage[-1]][1] >= span[1]:
            start = max(t for t in passage if offsets[t][0] <= span[0])
            end = min(t for t in passage if offsets[t][1] >= span[1])
        features.append(dict(_inputs(encoded, i), start_positions=start, end_positions=end))
    return features


def eval_features(examples: list[dict], tokenizer, max_length: int = 384, stride: int = 128
                  ) -> tuple[list[dict], list[int], list[list]]:
    """(features, example index of each feature, offsets): the offsets of each window's tokens
    in its context, None outside the passage, for :func:`predict_answers`."""
    encoded = _windows(examples, tokenizer, max_length, stride)
    features, owners, offsets = [], [], []
    for i, window in enumerate(encoded["offset_mapping"]):
        sequence = encoded.sequence_ids(i)
        features.append(_inputs(encoded, i))
        owners.append(int(encoded["overflow_to_sample_mapping"][i]))
        offsets.append([tuple(o) if s == 1 else None for o, s in zip(window, sequence,
                                                                     strict=True)])
    return features, owners, offsets


def predict_answers(examples: list[dict], owners: list[int], offsets: list[list],
                    start_logits, end_logits, max_answer_length: int = MAX_ANSWER_LENGTH,
                    n_best: int = N_BEST) -> dict[str, str]:
    """The answer text of every question (id -> text; '' where no span qualifies) from the
    logits (F, L) of its windows."""
    logits = torch.stack([torch.as_tensor(start_logits), torch.as_tensor(end_logits)], 1).float()
    if logits.shape[0] != len(owners) or len(offsets) != len(owners):
        raise ValueError(f"'start_logits' and 'end_logits' should have one row per feature "
                         f"({len(owners)}) but got {logits.shape[0]}")
    context = torch.tensor([[o is not None for o in window] for window in offsets])
    spans = best_spans(logits, context, max_answer_length, n_best)
    rows = torch.arange(logits.shape[0])
    found = spans[:, 0] >= 0
    score = torch.where(found, logits[rows, 0, spans[:, 0].clamp_min(0)]
                        + logits[rows, 1, spans[:, 1].clamp_min(0)], -torch.inf)
    best = {}
    for feature, owner in enumerate(owners):
        if found[feature] and (owner not in best or score[feature] > score[best[owner]]):
            best[owner] = feature
    answers = {}
    for index, example in enumerate(examples):
        text = ""
        if index in best:
            start, end = spans[best[index]].tolist()
            window = offsets[best[index]]
            text = example["context"][window[start][0]:window[end][1]]
        answers[example["id"]] = text
    return answers
