"""The console scripts, one module each (pyproject.toml's [project.scripts]): each reads its
command line, checks everything it can before anything runs, calls one function of the pipeline
and prints what it did, or one line saying what was wrong (errors.fail)."""
