"""`python -m trpo_pipeline ...` is `trpo-train ...`."""

from trpo_pipeline.cli.train import main

main()
