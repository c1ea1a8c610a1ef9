"""Hyperparameter search: the Optuna study (``study``) and its reports (``report``).

Why ``tuning/`` and not ``tune/``: ``convspec.compiler.tune`` is the public function.
"""
