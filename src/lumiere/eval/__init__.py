"""Evaluation: the analytic moving-shapes probe (text alignment of generated clips)."""

from lumiere.eval.probe import ATTRIBUTES, ProbeResult, alignment_accuracy, probe_clip, score

__all__ = ["ATTRIBUTES", "ProbeResult", "alignment_accuracy", "probe_clip", "score"]
