"""Training: mesh and sharding rules, optimizer, the pure train step, checkpoints and the loop."""
