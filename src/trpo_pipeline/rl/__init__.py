"""The TRPO engine: everything a training run and an evaluation need, and nothing of the
pipeline around it. It imports torch, numpy and gymnasium, never mlflow, hydra, omegaconf,
optuna, dvc or another package of trpo_pipeline (tests/test_layout.py), so it can be used and
tested alone::

    from trpo_pipeline.rl.config import RunConfig
    from trpo_pipeline.rl.evaluate import evaluate
    from trpo_pipeline.rl.train import train

    result = train(RunConfig(), Path("runs/demo"))
    print(evaluate(result.checkpoint, RunConfig().evaluate).mean_return)

Where each piece is: ``config`` (the engine's settings, declared with ``schema``), ``envs``
and ``normalizers``, ``policies``, ``rollout``, ``advantages`` (GAE), ``trpo`` (the math of
the update), ``adam`` (the critic's optimiser), ``train`` (the loop), ``learning_curve``,
``evaluate``, ``checkpoint``, ``run_files`` (what a run folder holds), ``files`` (atomic
writes), ``runtime`` (what this machine offers), ``errors``.
"""
