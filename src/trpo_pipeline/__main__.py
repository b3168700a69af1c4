"""`python -m trpo_pipeline ...` is `trpo-train ...`."""

from trpo_pipeline.cli import train_main

train_main()
