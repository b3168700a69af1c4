"""Hydra: composing conf/ into a config, checking a whole command line (every job of a
multirun) before Hydra writes anything, running the Hydra app, and the multirun's MLflow parent
run. The entry points in cli/ are built on these."""
