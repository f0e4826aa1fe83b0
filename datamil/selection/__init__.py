"""Scores -> selected episodes: aggregation to trajectories/segments, strategies, the selection artifact."""

from datamil.selection import baselines  # noqa: F401  (registers the baseline selection methods)
from datamil.selection.aggregate import Segments, per_segment, per_trajectory
from datamil.selection.methods import SELECTION_METHODS, SelectionConfig, SelectionRequest
from datamil.selection.selection_io import Selection, read_selection, write_selection
from datamil.selection.strategies import iterative_prune, threshold, top_k

__all__ = [
    "SELECTION_METHODS",
    "SelectionConfig",
    "SelectionRequest",
    "Segments",
    "Selection",
    "iterative_prune",
    "per_segment",
    "per_trajectory",
    "read_selection",
    "threshold",
    "top_k",
    "write_selection",
]
