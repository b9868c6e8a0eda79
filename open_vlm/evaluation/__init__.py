"""Evaluation (`open-vlm eval`): kinds in a registry (`run.py`), classification metrics, reports and plots."""
