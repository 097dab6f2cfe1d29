"""The documentation stays true: every ```python block of the README, of docs/*.md, of the projects'
READMEs and of tools/README.md runs, and every relative link points at a file (and heading) that
exists.

Each block is one test, with an id like ``README.md:57`` (the line of its opening fence). It is
executed in a fresh namespace with a temporary directory as the working directory, so a snippet
may write files. A block that defines an OpenMMLab ``custom_imports`` is a config fragment: the
modules it names are imported, and a ``model.head.loss`` it sets is built from that toolkit's
registry. Blocks that are not meant to run are fenced as ```bash or ```text. A block that needs
long (a training run) is marked by an HTML comment ``<!-- slow -->`` on the line just above its
fence, which gives it the ``slow`` marker (left out by ``make test-fast``).
"""
import glob
import importlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted({os.path.relpath(p, ROOT) for pattern in ("README.md", "docs/*.md",
                                                          "projects/*/README.md", "tools/README.md")
                for p in glob.glob(os.path.join(ROOT, pattern))})
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
SLOW_MARK = "<!-- slow -->"


def read(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read().splitlines()


def blocks(page):
    """[(line of the opening fence, language, code, marked slow)] of a markdown page."""
    lines, found, i = read(page), [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, language, start = opening.group(1), opening.group(2), i
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            i += 1
        indent = len(lines[start]) - len(lines[start].lstrip())
        code = "\n".join(line[indent:] for line in lines[start + 1:i])
        slow = start > 0 and lines[start - 1].strip() == SLOW_MARK
        found.append((start + 1, language, code, slow))
        i += 1
    return found


def snippets():
    return [pytest.param(f"{page}:{line}", code, id=f"{page}:{line}",
                         marks=[pytest.mark.slow] if slow else [])
            for page in PAGES for line, language, code, slow in blocks(page)
            if language == "python"]


def prose(page):
    """The page's lines outside fenced blocks."""
    lines, inside, fence = [], False, None
    for line in read(page):
        opening = FENCE.match(line)
        if inside:
            if line.strip().startswith(fence):
                inside = False
        elif opening:
            inside, fence = True, opening.group(1)
        else:
            lines.append(line)
    return lines


def anchors(page):
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to
    hyphens, '-1', '-2', ... for repeats."""
    seen, result = {}, set()
    for line in prose(page):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            result.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return result


def links():
    """Relative links ([text](target), ![alt](target)) outside code, per page."""
    found = []
    for page in PAGES:
        targets = {target for line in prose(page)
                   for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line))
                   if not re.match(r"[a-z]+:", target)}
        found += [pytest.param(page, target, id=f"{page}->{target}") for target in sorted(targets)]
    return found


def build_config_losses(namespace):
    """Import what a config fragment's custom_imports name, and build its head's loss from the
    toolkit's registry (reloss.mmpretrain -> mmpretrain's MODELS)."""
    for module in namespace["custom_imports"]["imports"]:
        importlib.import_module(module)
    loss = namespace.get("model", {}).get("head", {}).get("loss")
    if loss is not None:
        (module,) = namespace["custom_imports"]["imports"]
        host = importlib.import_module(module.split(".", 1)[1] + ".registry")
        from mmengine.registry import DefaultScope

        # In the host's own scope: another test's Runner may have left its own as the default.
        with DefaultScope.overwrite_default_scope(host.MODELS.scope):
            built = host.MODELS.build(loss)
        assert type(built).__name__ == loss["type"]


@pytest.mark.parametrize("where, code", snippets())
def test_snippet_runs(where, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    exec(compile(code, where, "exec"), namespace)
    if "custom_imports" in namespace:
        build_config_losses(namespace)


@pytest.mark.parametrize("page, target", links())
def test_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path \
        else os.path.join(ROOT, page)
    assert os.path.exists(resolved), f"{page} links to {target}, which does not exist"
    if anchor and resolved.endswith(".md"):
        known = anchors(os.path.relpath(resolved, ROOT))
        assert anchor in known, f"{page} links to {target}; its headings give {sorted(known)}"


def test_every_page_is_collected():
    assert "README.md" in PAGES and any(p.startswith("docs/") for p in PAGES)
    assert any(language == "python" for _, language, _, _ in blocks("README.md"))
