"""MoE serving tools: inference options (``moe.inference``, expert buffering), calibration of
per-expert load, load-balanced expert placement and per-language expert pruning.

``python -m nmt.moe_tools placement|prune ...`` (see :mod:`nmt.moe_tools.__main__`).
"""
