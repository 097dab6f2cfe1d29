"""Saving and loading surrogates: shipped ones by name, others by path, always sha256-checked.

A checkpoint is a dict read with ``torch.load(weights_only=True)``::

    format: 'reloss-surrogate', version: 1, task: 'cls' | 'pose' | 'nat',
    architecture: {'type': class name, **constructor arguments}, metric: 'module:function',
    state_dict: the net's weights

The shipped checkpoints live in ``reloss/checkpoints/`` with a ``manifest.json`` of their sha256
and a model card each (``<name>.json``). Nothing is ever downloaded.
"""
import hashlib
import json
import os
import pickle

import torch

from .surrogates import SURROGATES

FORMAT, VERSION = "reloss-surrogate", 1
CHECKPOINT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints")
MANIFEST = os.path.join(CHECKPOINT_DIR, "manifest.json")


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped():
    """{name: manifest entry} of the checkpoints that ship with the package."""
    if not os.path.exists(MANIFEST):
        return {}
    with open(MANIFEST, encoding="utf-8") as f:
        return json.load(f)


def save_surrogate(surrogate, path, task, metric, force=False):
    """Write ``surrogate`` to ``path`` (refusing to replace a file unless ``force``); sha256."""
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path} already exists; pass force=True (--force) to replace it")
    state = {key: value.detach().clone().contiguous()
             for key, value in surrogate.state_dict().items()}
    payload = dict(format=FORMAT, version=VERSION, task=task,
                   architecture=dict(type=type(surrogate).__name__, **surrogate.config()),
                   metric=metric, state_dict=state)
    torch.save(payload, path)
    return sha256_file(path)


def _expected_sha256(path):
    """The sha256 the model card next to ``path`` records for it, if there is such a card."""
    stem = os.path.splitext(path)[0]
    for card in (stem + ".json", os.path.join(os.path.dirname(path), "model_card.json")):
        if os.path.exists(card):
            with open(card, encoding="utf-8") as f:
                record = json.load(f)
            if record.get("checkpoint") == os.path.basename(path):
                return record.get("sha256"), card
    return None, None


def _field(path, payload, name, check, expected):
    value = payload.get(name) if isinstance(payload, dict) else None
    if not check(value):
        raise ValueError(f"{path}: field '{name}' should be {expected} but got {value!r}"[:400])
    return value


def load_surrogate(name_or_path, sha256=None, trainable=False):
    """A surrogate by shipped name ('cls', 'pose', 'nat') or by checkpoint path.

    The file's sha256 must match the manifest (shipped), ``sha256`` (if given) or the model card
    that ``tools/pretrain_surrogate.py`` wrote beside it (if there is one). The net comes back in
    eval mode with frozen weights unless ``trainable``.
    """
    entries = shipped()
    if name_or_path in entries:
        entry = entries[name_or_path]
        path, expected, source = (os.path.join(CHECKPOINT_DIR, entry["file"]), entry["sha256"],
                                  MANIFEST)
    else:
        path = os.fspath(name_or_path)
        if not os.path.isfile(path):
            names = ", ".join(map(repr, entries)) or "none"
            raise FileNotFoundError(f"'{path}' is neither a shipped surrogate ({names}) nor a file")
        expected, source = (sha256, "the sha256 argument") if sha256 else _expected_sha256(path)
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise ValueError(f"{path}: sha256 {actual} does not match {expected} recorded in {source}; "
                         f"the file is corrupt or not the one that was recorded")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, OSError) as error:
        raise ValueError(f"{path}: not a readable surrogate checkpoint (torch.load failed: "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__})"
                         ) from None
    _field(path, payload, "format", lambda v: v == FORMAT, repr(FORMAT))
    task = _field(path, payload, "task", lambda v: v in SURROGATES,
                  f"one of {', '.join(map(repr, SURROGATES))}")
    cls = SURROGATES[task]
    architecture = dict(_field(path, payload, "architecture",
                               lambda v: isinstance(v, dict) and v.get("type") == cls.__name__,
                               f"a dict with type '{cls.__name__}'"))
    architecture.pop("type")
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
