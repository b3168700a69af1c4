"""The model registry: every pipeline execution's policy as a version of ``trpo-<env id>``, and
the alias ``champion`` on the version with the best evaluation.

``mlflow models serve -m "models:/trpo-CartPole-v1@champion" --env-manager local`` serves the
best CartPole policy so far; ``mlflow.pyfunc.load_model`` takes the same URI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trpo_pipeline.tracking.artifacts import MODEL_NAME

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION = "champion"
RETURN_TAG = "eval/mean_return"  # the version tag the champion is chosen by
_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def registered_model_name(env_id: str) -> str:
    return f"trpo-{env_id}"


@dataclass(frozen=True)
class Registration:
    """A new version, and where the alias ``champion`` is after it."""

    name: str
    version: str
    mean_return: float
    champion: str  # the champion's version after this registration
    previous: str | None  # the champion before it (None: the first champion)
    previous_return: float | None

    @property
    def moved(self) -> bool:
        return self.champion == self.version

    def line(self) -> str:
        """What happened, in one line for the terminal."""
        new = f"{self.name} version {self.version} (return {self.mean_return:.1f})"
        if self.previous is None:
            return f"registry: {new} is the {CHAMPION}"
        was = f"version {self.previous} ({self.previous_return:.1f})"
        if self.moved:
            return f"registry: {new} is the new {CHAMPION}, beating {was}"
        return f"registry: {new} registered; {CHAMPION} stays {was}"


def logged_model_id(client: MlflowClient, run_id: str, experiment_id: str) -> str | None:
    """The id of the run's logged ``policy`` model (the latest, if logged more than once)."""
    token, found = None, []
    while True:
        page = client.search_logged_models(
            [experiment_id], filter_string=f"name = '{MODEL_NAME}'", page_token=token
        )
        found += [m for m in page if m.source_run_id == run_id]
        token = page.token
        if not token:
            break
    return max(found, key=lambda m: m.creation_timestamp).model_id if found else None


def champion_return(client: MlflowClient, name: str) -> tuple[str, float] | None:
    """(version, evaluation mean return) of the champion; None when there is none yet."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such model, or no alias yet
        return None
    # A version registered by hand, without the tag, is beaten by any evaluated one.
    return str(version.version), float(version.tags.get(RETURN_TAG, -math.inf))


def register_policy(
    client: MlflowClient,
    run_id: str,
    experiment_id: str,
    env_id: str,
    mean_return: float,
    tags: Mapping[str, str],
) -> Registration | None:
    """Register the run's ``policy`` model as a new version of ``trpo-<env id>`` tagged with
    its return and ``tags``; move ``champion`` to it only if it beats the champion (a tie
    keeps the champion). None when the run logged no model (tracking.log_model=false)."""
    from mlflow.exceptions import MlflowException

    model_id = logged_model_id(client, run_id, experiment_id)
    if model_id is None:
        return None
    name = registered_model_name(env_id)
    try:
        client.create_registered_model(
            name, description=f"TRPO policies for {env_id}; alias {CHAMPION}: the best"
        )
    except MlflowException as err:
        if err.error_code not in _EXISTS:
            raise
    before = champion_return(client, name)
    created = client.create_model_version(
        name,
        source=f"models:/{model_id}",
        run_id=run_id,
        tags={RETURN_TAG: repr(float(mean_return)), "run_id": run_id, **tags},
        model_id=model_id,
        # Open-source stores create a version READY at once; waiting only logs a line.
        await_creation_for=0,
    )
    version = str(created.version)  # an int from some stores, a string from others
    if before is None or mean_return > before[1]:
        client.set_registered_model_alias(name, CHAMPION, version)
        champion = version
    else:
        champion = before[0]
    return Registration(
        name=name,
        version=version,
        mean_return=float(mean_return),
        champion=champion,
        previous=before[0] if before else None,
        previous_return=before[1] if before else None,
    )
