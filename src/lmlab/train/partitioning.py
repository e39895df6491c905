"""The device mesh and the logical-axis rules that shard parameters, optimizer state and batches.

Parameters carry logical axis names (see models/transformer.py); these rules map them onto the mesh
axes (data, fsdp, tensor). Batches are split over data x fsdp; weights are split over fsdp (ZeRO-3 style)
on their embed dimension and over tensor on heads / mlp / vocab (Megatron style).
"""

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

LOGICAL_RULES = (
    ("batch", BATCH),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("length", None),
)


def make_mesh(shape: tuple[int, int, int], devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over all devices (of all processes), axis types Auto.

  `jax.sharding.Mesh` keeps the Auto axis types that jit's in/out shardings need (jax.make_mesh now
  defaults to Explicit).
  """
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices).reshape(shape), AXES)


def data_parallel_mesh() -> Mesh:
  """Every device on the data axis: sampling and prediction need no model parallelism."""
  return make_mesh((jax.device_count(), 1, 1))


def state_shardings(abstract_state, mesh: Mesh):
  """NamedShardings for a (possibly abstract) train state whose leaves carry logical-axis metadata."""
  specs = nn.get_partition_spec(abstract_state)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows over data x fsdp, the sequence axis replicated."""
  return NamedSharding(mesh, P(BATCH))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles each process's rows into global arrays sharded over data x fsdp."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
