"""Hyperparameter search: the Optuna study (``study``), its database (``storage``) and its reports (``report``).

Why ``tuning/`` and not ``tune/``: ``convspec.compiler.tune`` is the public function.
"""
