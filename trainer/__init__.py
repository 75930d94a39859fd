"""razor's trainer: the program torchrun starts on every process of a RazorJob.

``python -m razor_trainer CONFIG [--work-dir DIR] [--cfg-options k=v ...]``; see ``train.py``.
"""
