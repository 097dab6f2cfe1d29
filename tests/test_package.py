import os
import re
import subprocess
import sys
import zipfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_TOOLKITS = ("mmengine", "mmcv", "mmpretrain", "mmpose", "fairseq", "scipy", "sklearn",
                 "matplotlib", "torchsort", "diffsort")


def test_core_import_loads_no_host_toolkit():
    code = ("import sys, reloss; "
            f"print(','.join(m for m in {HOST_TOOLKITS!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""


def test_wheel_holds_the_package_and_nothing_else(built_wheel):
    names = zipfile.ZipFile(built_wheel).namelist()
    outside = [n for n in names
               if not re.match(r"reloss/|fairseq_reloss/|reloss-[^/]+\.dist-info/", n)]
    assert outside == []
    assert "reloss/rank.py" in names and "reloss/tasks/cls.py" in names
    assert "reloss/cli/pretrain.py" in names and "reloss/__main__.py" in names
    assert names.count("fairseq_reloss/__init__.py") == 1
    for shipped in ("manifest.json", "cls.pt", "cls.json", "pose.pt", "nat.pt"):
        assert f"reloss/checkpoints/{shipped}" in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "reloss = reloss.cli:main" in zipfile.ZipFile(built_wheel).read(entry_points).decode()


def test_readme_python_snippets_run():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        snippets = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert snippets, "the README shows no python snippet"
    for snippet in snippets:
        torch.manual_seed(0)
        exec(compile(snippet, "README.md", "exec"), {})


def _setup_arguments():
    """The keyword arguments of setup.py's ``setup(...)`` call that are literals."""
    import ast

    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    (call,) = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
               and getattr(node.func, "id", None) == "setup"]
    arguments = {}
    for keyword in call.keywords:
        try:
            arguments[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            pass
    return arguments


def test_declared_floors_are_the_tested_pins():
    """Every floor setup.py declares is the major.minor of the version constraints.txt pins (the
    stack `make test` runs), and python_requires is the Python that runs the tests."""
    from packaging.requirements import Requirement

    with open(os.path.join(ROOT, "constraints.txt"), encoding="utf-8") as f:
        pins = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in
                (line.strip().split("==") for line in f if "==" in line)}
    arguments = _setup_arguments()
    requirements = [*arguments["install_requires"],
                    *(r for extra in arguments["extras_require"].values() for r in extra)]
    assert len(requirements) > 20
    for text in requirements:
        requirement = Requirement(text)
        floors = [s.version for s in requirement.specifier if s.operator == ">="]
        assert len(floors) == 1, f"{text}: one floor (>=) expected"
        pin = pins[re.sub(r"[-_.]+", "-", requirement.name).lower()].split(".")
        floor = floors[0].split(".")
        assert len(floor) >= 2 and pin[:len(floor)] == floor, \
            f"{text}: the floor should be the tested pin {'.'.join(pin)}'s major.minor (or more)"
    assert arguments["python_requires"] == f">={sys.version_info.major}.{sys.version_info.minor}"
