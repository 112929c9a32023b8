"""Hydra configs for solo-learn's main_pretrain.py / main_linear.py (package data).

`s2bnn configs` prints where they are installed.
"""
