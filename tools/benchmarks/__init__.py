"""How the project measures itself: the training benchmark and its regime matrices
(``training``, ``reference/``), the proxies run through each host toolkit's own tools
(``pose_proxy``, ``nat_proxy``, ``qa_proxy``), the demo, the speed benchmarks (``step``, ``loss``,
``rank``) and what they share (``experiment``). Run from the repository root as
``python -m tools.benchmarks.<name>``; they import the user tools in ``tools/`` and the package,
never the other way round.
"""
