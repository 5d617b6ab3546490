"""Facility location and the batched stochastic greedy.

``facility_location`` says what is maximised (distances, gains, objective,
CRAIG weights); ``greedy`` says how (the batched stochastic greedy);
``partitions`` splits many rows into problems solved block by block.
"""

from nacs_engine.selection.facility_location import (
    exact_greedy,
    facility_location_value,
    release_workspace,
    similarity_block,
)
from nacs_engine.selection.greedy import (
    GreedyResult,
    batched_stochastic_greedy,
    batched_stochastic_greedy_with_gains,
)
from nacs_engine.selection.partitions import (
    PartitionSelection,
    default_memory_bytes,
    partition_budgets,
    select_partitions,
)

__all__ = [
    "GreedyResult",
    "PartitionSelection",
    "batched_stochastic_greedy",
    "batched_stochastic_greedy_with_gains",
    "default_memory_bytes",
    "exact_greedy",
    "facility_location_value",
    "partition_budgets",
    "release_workspace",
    "select_partitions",
    "similarity_block",
]
