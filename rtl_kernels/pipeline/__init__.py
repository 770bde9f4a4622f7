"""The RTL prune–retrain pipeline: partition → adaptive tickets (IMP per subset) → joint retraining → evaluation.

Public entry points: :func:`find_tickets`, :func:`joint_retrain`, :func:`similarity` (the
contract), plus :class:`Recipe` and :class:`Run` for resumable runs, :class:`MaskedAdam`, the
partitioners, baselines and metrics.
"""

from .baselines import param_counts, with_num_tickets
from .batching import Batching, logits_of
from .grow import add_tickets
from .imp import TicketSearch, TicketStore, extract_tickets, find_tickets
from .metrics import binary_scores, classification_report, one_vs_rest, psnr, si_snr, si_snr_improvement
from .optim import MaskedAdam, masked_step
from .partition import Partition, class_groups, split
from .recalibrate import recalibrate_norms
from .recipe import Recipe, packaged_recipe
from .retrain import joint_retrain
from .run import Run, default_run_dir, format_table
from .schedule import level_schedule, parse_rewind, round_sparsities
from .similarity import CollapseController, collapse_point, similarity
from .store import DirStore
from .strong import NonFiniteLossError, find_strong_tickets

__all__ = [
    "Batching",
    "logits_of",
    "add_tickets",
    "CollapseController",
    "DirStore",
    "MaskedAdam",
    "NonFiniteLossError",
    "Partition",
    "Recipe",
    "Run",
    "TicketSearch",
    "TicketStore",
    "binary_scores",
    "class_groups",
    "classification_report",
    "collapse_point",
    "default_run_dir",
    "extract_tickets",
    "find_strong_tickets",
    "find_tickets",
    "format_table",
    "joint_retrain",
    "level_schedule",
    "masked_step",
    "one_vs_rest",
    "packaged_recipe",
    "param_counts",
    "parse_rewind",
    "psnr",
    "recalibrate_norms",
    "round_sparsities",
    "si_snr",
    "si_snr_improvement",
    "similarity",
    "split",
    "with_num_tickets",
]
