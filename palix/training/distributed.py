"""Multi-process (multi-host) start-up: ``jax.distributed.initialize`` with t5x's flags.

Every process runs the same command with its own ``--process_id``; the coordinator is process 0's
``host:port``. On CPU the cross-process collectives use gloo. Call this before anything touches a
JAX backend (the ``palix`` CLI does it right after parsing flags and gin).
"""

from typing import Optional

import gin
import jax


@gin.configurable
def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, cpu_collectives: str = "gloo",
               initialization_timeout: int = 300) -> bool:
  """Joins the process group; returns False (and does nothing) without a coordinator address."""
  if not coordinator_address:
    if num_processes not in (None, 1):
      raise ValueError(f"num_processes={num_processes} needs a coordinator_address (host:port of "
                       "process 0)")
    return False
  if num_processes is None or process_id is None:
    raise ValueError("multi-process runs need coordinator_address, num_processes and process_id "
                     f"(got {coordinator_address!r}, {num_processes}, {process_id})")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process_id {process_id} is not in [0, {num_processes})")
  jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             initialization_timeout=initialization_timeout)
  return True
