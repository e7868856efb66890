"""The embedded runtime: hosts the stages, cuts checkpoints and recovers after a crash."""
