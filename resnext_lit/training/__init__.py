"""What runs inside a Lightning process: the CLI, the LightningModule, its schedules and scale,
the run's record, the W&B logger and the callbacks (checkpoints, preemption, resume, non-finite
losses, data wait, progress bar), one concept per module.

`resnext_lit.experiments` (tables, sweeps, summaries) never imports this package: it reads what
runs wrote, without Lightning.
"""
