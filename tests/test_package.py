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
    assert names.count("fairseq_reloss/__init__.py") == 1
    for shipped in ("manifest.json", "cls.pt", "cls.json", "pose.pt", "nat.pt"):
        assert f"reloss/checkpoints/{shipped}" in names


def test_readme_python_snippets_run():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        snippets = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert snippets, "the README shows no python snippet"
    for snippet in snippets:
        torch.manual_seed(0)
        exec(compile(snippet, "README.md", "exec"), {})
