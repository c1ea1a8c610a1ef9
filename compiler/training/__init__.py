"""Training: ``train()`` (a short orchestrator in ``loop``) over its parts: the training state and
checkpoints, ``train_epoch()`` and ``evaluate()``, early stopping and schedules, progress, device
placement, distributed setup and launch, the report.

Why ``training/`` and not ``train/``: ``convspec.compiler.train`` is the public function; a
sub-package of that name would replace it as an attribute of ``convspec.compiler`` once imported.
"""
