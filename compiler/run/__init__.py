"""The run folder: its paths, checkpoints, results and report.

Shared by training (which writes it), export and tuning (which read it), so it sits below all
three: none of them imports another to reach a run's files.
"""
