"""Fixtures shared by several test modules."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory):
    """The wheel ``pip wheel`` builds from a copy of the source tree (tests, tools and projects
    included, as in a checkout): its path."""
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "src"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source)
    for name in ("plugins", "tests", "tools", "projects"):
        if os.path.isdir(os.path.join(ROOT, name)):
            shutil.copytree(os.path.join(ROOT, name), source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(folder / "dist"), str(source)], check=True)
    (wheel,) = (folder / "dist").glob("reloss-*.whl")
    return wheel


@pytest.fixture(autouse=True)
def restored_environment():
    """Each test leaves ``os.environ`` as it found it. tools/train.py and tools/test.py set
    ``LOCAL_RANK`` there, as OpenMMLab's do (one run a process); left behind in the test process,
    it makes transformers' ``TrainingArguments`` of a later test expect a torchrun launch."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)
