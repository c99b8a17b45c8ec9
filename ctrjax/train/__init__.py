"""Training: the pure train step, sharding over a device mesh, checkpoints and the epoch loop."""
