"""Every command in the documentation's shell blocks runs as written, short of doing the work: its
program exists and takes the arguments shown.

Each command of a ```bash block in README.md, docs/*.md and the projects' READMEs (continuation
lines joined, comments dropped, ``;`` and ``&&`` splitting commands) is one test:

- ``python -m MODULE ARGS``, ``python PATH.py ARGS`` and ``reloss COMMAND ARGS`` run the program
  in this process until its argument parser has parsed ``ARGS``; an argument the parser refuses
  fails the test. A usage line (one that shows optional arguments in ``[...]``) only needs its
  program to exist.
- ``make TARGET`` needs the target in the Makefile; a script path (``tools/dist_train.sh``,
  ``projects/.../train.sh``, also after ``bash``, ``srun ...`` or ``VAR=value``) needs the file,
  executable.
- Other programs (``fairseq-train``, ``ln``, shell keywords) are the hosts' or the shell's and are
  not checked here. A ``for`` loop's variable reads as its first value.
"""
import argparse
import functools
import os
import re
import runpy
import shlex
import sys

import pytest
from test_docs import PAGES, ROOT, blocks


def expand(loop, match):
    """A shell variable's stand-in: a for loop's first value, else the variable as written."""
    return loop.get(match[1], match[0])


def commands():
    """[(page:line, command as written, its words)] of every command in the pages' shell
    blocks."""
    found = []
    for page in PAGES:
        for line, language, code, _ in blocks(page):
            if language not in ("bash", "sh", "shell"):
                continue
            loop = {}  # a for loop's variable: its first value stands in for it
            for text in re.sub(r"\\\n", " ", code).splitlines():
                lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
                lexer.whitespace_split = True
                words = []
                for word in [*lexer, ";"]:
                    if word in (";", "&&", "||", "|", "&"):
                        while words and words[0] in ("do", "then", "else"):
                            words = words[1:]
                        if words[:1] == ["for"] and len(words) > 3 and words[2] == "in":
                            loop[words[1]] = words[3]
                            words = []
                        words = [re.sub(r"\$\{?(\w+)\}?", functools.partial(expand, loop), w)
                                 for w in words]
                        if words:
                            found.append((f"{page}:{line}", shlex.join(words), words))
                        words = []
                    else:
                        words.append(word)
    return found


class Parsed(Exception):
    """Raised by the patched parser once it has parsed the arguments."""


def program(words):
    """(kind, target, argv) of a command's words: ('python', module or path, argv),
    ('make', target, []), ('script', path, argv) or (None, None, None)."""
    while words and (re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]) or words[0] in ("env", "bash",
                                                                                      "exec")):
        words = words[1:]
    if words and words[0] == "srun":  # srun OPTIONS PROGRAM ...: the first script or python
        rest = [i for i, w in enumerate(words) if w.endswith(".sh") or w == "python"]
        words = words[rest[0]:] if rest else []
        return program(words)
    if not words:
        return None, None, None
    first = words[0]
    if first in ("python", "python3") and len(words) > 1:
        if words[1] == "-m" and len(words) > 2:
            return "python", words[2], words[3:]
        if words[1].endswith(".py"):
            return "python", words[1], words[2:]
        return None, None, None
    if first == "reloss":
        return "python", "reloss", words[1:]
    if first == "make":
        return "make", words[1] if len(words) > 1 else "", []
    if first.endswith(".sh"):
        return "script", first, words[1:]
    return None, None, None


CASES = [(where, text, *program(words)) for where, text, words in commands()]
CHECKED = [pytest.param(where, text, kind, target, argv, id=f"{where}: {text[:60]}")
           for where, text, kind, target, argv in CASES if kind is not None]


def make_targets():
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        return {name for line in f for name in re.findall(r"^([\w.-]+):", line)}


@pytest.mark.parametrize("where, text, kind, target, argv", CHECKED)
def test_documented_command_runs_as_written(where, text, kind, target, argv, monkeypatch,
                                            capsys):
    if kind == "make":
        assert target in make_targets(), f"{where}: `{text}`: no target {target!r} in the Makefile"
        return
    if kind == "script":
        path = os.path.join(ROOT, target)
        assert os.path.isfile(path) and os.access(path, os.X_OK), \
            f"{where}: `{text}`: {target} is not an executable file of the repository"
        return
    module = target.removesuffix(".py").replace("/", ".") if target.endswith(".py") else target
    usage = "[" in text
    if usage:
        assert os.path.isfile(os.path.join(ROOT, target)) if target.endswith(".py") else \
            __import__("importlib.util").util.find_spec(module) is not None, \
            f"{where}: `{text}`: no program {target!r}"
        return
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [target, *argv])
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(ROOT)
    try:
        if target.endswith(".py"):  # as python runs a script: its folder first on sys.path
            monkeypatch.syspath_prepend(os.path.dirname(os.path.join(ROOT, target)))
            runpy.run_path(os.path.join(ROOT, target), run_name="__main__")
        else:  # as python -m runs it: freshly, not the copy an earlier test imported
            for name in (module, f"{module}.__main__"):
                monkeypatch.delitem(sys.modules, name, raising=False)
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except Parsed:
        return
    except SystemExit as error:
        pytest.fail(f"{where}: `{text}` exits {error.code} at its arguments:\n"
                    f"{capsys.readouterr().err[-1500:]}")
    pytest.fail(f"{where}: `{text}` finished without parsing arguments")


def test_the_pages_hold_commands_of_every_kind():
    kinds = {kind for _, _, kind, _, _ in CASES}
    assert {"python", "make", "script"} <= kinds
    assert any(target == "reloss" for _, _, _, target, _ in CASES)
