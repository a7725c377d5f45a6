"""Weight sparsity: pruning in the optimizer, non-zero counts, n:m export, and the sparse scaling
law with its optimal-sparsity advisor (docs/sparsity.md).

Importing this package registers the gin names ``sparsity.Pruning``, ``sparsity.GradualSchedule``,
``sparsity.OneShot``, ``sparsity.Unstructured``, ``sparsity.NM`` and ``sparsity.IterativeNM``.
"""

from palix.sparsity.pruning import Pruning, PruningState, embedding_sparsity, find_pruning_state
from palix.sparsity.schedule import GradualSchedule, OneShot
from palix.sparsity.structures import NM, IterativeNM, Unstructured
