"""Saving and loading surrogates: shipped ones by name, others by path, always sha256-checked.

A checkpoint is a dict read with ``torch.load(weights_only=True)``::

    format: 'reloss-surrogate', version: 1, task: 'cls' | 'pose' | 'nat' | 'qa',
    architecture: {'type': a surrogate class of the task, **its constructor arguments},
    metric: 'module:function',
    state_dict: the net's weights

The shipped checkpoints live in ``reloss/checkpoints/`` with a ``manifest.json`` of their sha256
and a model card each (``<name>.json``). Nothing is ever downloaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re

import torch

from .surrogate import Surrogate
from .tasks import TASKS

FORMAT, VERSION = "reloss-surrogate", 1
CHECKPOINT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints")
MANIFEST = os.path.join(CHECKPOINT_DIR, "manifest.json")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped() -> dict[str, dict]:
    """{name: manifest entry} of the checkpoints that ship with the package."""
    if not os.path.exists(MANIFEST):
        return {}
    with open(MANIFEST, encoding="utf-8") as f:
        return json.load(f)


def save_surrogate(surrogate: Surrogate, path: str | os.PathLike, task: str, metric: str,
                   force: bool = False) -> str:
    """Write ``surrogate`` to ``path`` (refusing to replace a file unless ``force``); returns the
    file's sha256."""
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path} already exists; pass force=True (--force) to replace it")
    state = {key: value.detach().clone().contiguous()
             for key, value in surrogate.state_dict().items()}
    payload = dict(format=FORMAT, version=VERSION, task=task,
                   architecture=dict(type=type(surrogate).__name__, **surrogate.config()),
                   metric=metric, state_dict=state)
    torch.save(payload, path)
    return sha256_file(path)


def _card_sha256(path):
    """(sha256, card) from the model card that ``reloss pretrain`` or ``reloss ship`` wrote next
    to ``path``, or (None, None) where there is none.

    A card is ours only if it is a JSON object whose ``checkpoint`` names this file; any other
    file of that name (not JSON, another checkpoint's, someone else's) is not read further. A card
    of ours without a well-formed sha256 is an error.
    """
    stem = os.path.splitext(path)[0]
    for card in (stem + ".json", os.path.join(os.path.dirname(path), "model_card.json")):
        try:
            with open(card, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("checkpoint") != os.path.basename(path):
            continue
        sha256 = record.get("sha256")
        if not (isinstance(sha256, str) and SHA256.fullmatch(sha256)):
            raise ValueError(f"{card}: field 'sha256' of the model card of {path} should be 64 "
                             f"hex digits but got {sha256!r}"[:400])
        return sha256, card
    return None, None


def _field(path, payload, name, check, expected):
    value = payload.get(name) if isinstance(payload, dict) else None
    if not check(value):
        raise ValueError(f"{path}: field '{name}' should be {expected} but got {value!r}"[:400])
    return value


def load_surrogate(name_or_path: str | os.PathLike, sha256: str | None = None,
                   trainable: bool = False) -> Surrogate:
    """A surrogate by shipped name ('cls', 'pose', 'nat', 'qa') or by checkpoint path.

    The file's sha256 must match the manifest (shipped), ``sha256`` (if given, for shipped names
    too) and the model card that ``reloss pretrain`` wrote beside it (if there is one, and
    ``sha256`` is not given). The net comes back in eval mode with frozen weights unless
    ``trainable``. A checkpoint may name any surrogate class of its task; one written before a
    class was split is read through the task's ``upgrade``.
    """
    entries = shipped()
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str):
        names = ", ".join(map(repr, entries)) or "none"
        raise TypeError(f"'name_or_path' should be a shipped surrogate name ({names}) or a "
                        f"checkpoint path (str or os.PathLike) but got "
                        f"{type(name_or_path).__name__}")
    if sha256 is not None and not (isinstance(sha256, str) and SHA256.fullmatch(sha256)):
        raise ValueError(f"'sha256' should be None or 64 hex digits but got {sha256!r}"[:300])
    expected = []  # (sha256, where it is recorded)
    if sha256 is not None:
        expected.append((sha256.lower(), "the sha256 argument"))
    if name_or_path in entries:
        entry = entries[name_or_path]
        path = os.path.join(CHECKPOINT_DIR, entry["file"])
        expected.append((entry["sha256"], MANIFEST))
    else:
        path = name_or_path
        if not os.path.isfile(path):
            names = ", ".join(map(repr, entries)) or "none"
            raise FileNotFoundError(f"'{path}' is neither a shipped surrogate ({names}) nor a file")
        if sha256 is None:
            expected.append(_card_sha256(path))
    actual = sha256_file(path)
    for digest, source in expected:
        if digest is not None and actual != digest:
            raise ValueError(f"{path}: sha256 {actual} does not match {digest} recorded in "
                             f"{source}; the file is corrupt or not the one that was recorded")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, OSError) as error:
        raise ValueError(f"{path}: not a readable surrogate checkpoint (torch.load failed: "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__})"
                         ) from None
    _field(path, payload, "format", lambda v: v == FORMAT, repr(FORMAT))
    task = _field(path, payload, "task", lambda v: isinstance(v, str) and v in TASKS,
                  f"one of {', '.join(map(repr, TASKS))}")
    classes = TASKS[task].surrogate_classes
    architecture = dict(_field(path, payload, "architecture",
                               lambda v: isinstance(v, dict) and isinstance(v.get("type"), str),
                               f"a dict with a type among {', '.join(map(repr, classes))}"))
    if TASKS[task].upgrade is not None:
        architecture = TASKS[task].upgrade(architecture)
    cls = classes.get(architecture.pop("type"))
    if cls is None:
        raise ValueError(f"{path}: field 'architecture' should name a '{task}' surrogate class "
                         f"({', '.join(classes)}) but names {payload['architecture']['type']!r}")
    state = _field(path, payload, "state_dict", lambda v: isinstance(v, dict), "a dict of tensors")
    try:
        surrogate = cls(**architecture)
    except TypeError as error:
        raise ValueError(f"{path}: field 'architecture' does not fit {cls.__name__}: {error}"
                         ) from None
    try:
        surrogate.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path}: field 'state_dict' does not match the architecture "
                         f"{payload['architecture']}: {error}") from None
    surrogate.eval()
    surrogate.requires_grad_(trainable)
    surrogate.metric = payload.get("metric")
    surrogate.sha256 = actual
    return surrogate
