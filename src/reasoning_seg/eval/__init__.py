"""Evaluation: metrics with their definitions, and the benchmark runner over simulated rooms.

``metrics`` (Acc@k, mIoU, false found), ``benchmark`` (experiments from YAML, tables, failure pages;
``python -m reasoning_seg.eval.benchmark``). May import anything but ``ros``.
"""
