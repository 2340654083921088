"""The lmforge library: text readers and cleaning, tokenizers, models, training and evaluation.

Pure Python/PyTorch: it never imports Prefect, so every piece can be used and tested on its own.
"""
