"""One training run: the Trainer, its update engine (DDP, DeepSpeed), checkpoints, evaluation, metrics, schedules."""
