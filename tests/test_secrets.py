"""Credentials in a tracking or storage URL never leave the process: not in params, tags,
files, artifacts, reports, the MLflow store, printed lines or errors. Documented and printed
server commands bind to 127.0.0.1."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_support import BIN, TINY, command_env, new_store, run
from trpo_pipeline import tracking
from trpo_pipeline.config import config_from_dict
from trpo_pipeline.credentials import mask

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "Pw-7f3a9Zq"  # appears nowhere else; searched for, byte by byte


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the masking function ------------------------------------------------------------------------

userinfo = st.text(
    st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="-._~!$&*+,;="),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https", "postgresql", "postgresql+psycopg2", "mysql"]),
    user=userinfo.filter(lambda u: "=" not in u),
    password=userinfo.filter(lambda p: len(p) >= 4),
    host=st.from_regex(r"[a-z][a-z0-9.-]{0,20}(:[0-9]{2,5})?", fullmatch=True),
    path=st.from_regex(r"(/[a-z0-9_]{0,10}){0,2}", fullmatch=True),
    around=st.tuples(
        st.sampled_from(["", "error: ", "API request to "]), st.sampled_from(["", " failed"])
    ),
)
def test_mask_removes_the_password_and_keeps_the_rest(
    scheme, user, password, host, path, around
) -> None:
    url = f"{scheme}://{user}:{password}@{host}{path}"
    text = f"{around[0]}{url}{around[1]}"
    masked = mask(text)
    assert masked == f"{around[0]}{scheme}://{user}:***@{host}{path}{around[1]}"
    assert mask(masked) == masked


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("postgresql://u:p@ss@db/optuna", "postgresql://u:***@db/optuna"),  # '@' in a password
        ("a http://a:b@h and https://c:d@e", "a http://a:***@h and https://c:***@e"),
        ("host=db password=hunter2 dbname=x", "host=db password=*** dbname=x"),
        ("https://h/api?token=abc&x=1", "https://h/api?token=***&x=1"),
        ("journal:/tmp/journal.log", "journal:/tmp/journal.log"),
    ],
)
def test_mask_examples(text, masked) -> None:
    assert mask(text) == masked


def test_params_tags_and_tune_labels_are_masked(tiny_config) -> None:
    cfg = tiny_config(
        tracking={"uri": f"http://alice:{PASSWORD}@127.0.0.1:5000"},
        tune={"storage": {"url": f"postgresql://bob:{PASSWORD}@db:5432/optuna"}},
    )
    params = tracking.flatten_config(cfg)
    assert params["tracking.uri"] == "http://alice:***@127.0.0.1:5000"
    assert params["tune.storage.url"] == "postgresql://bob:***@db:5432/optuna"
    assert mask(cfg.tune.storage.url) == "postgresql://bob:***@db:5432/optuna"
    assert PASSWORD not in tracking.ui_command(cfg.tracking.uri)
    assert PASSWORD not in str(tracking.provenance_tags(cfg))


# --- end to end: a server with a password in its URL ---------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """`mlflow server` on 127.0.0.1 (it ignores the basic-auth header the URL's credentials
    become, so a password can ride along without an auth plugin)."""
    tmp = tmp_path_factory.mktemp("secrets")
    store = new_store(tmp / "store")
    port = free_port()
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            store,
            "--artifacts-destination",
            str(tmp / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp,
        env=command_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not come up"
                time.sleep(0.5)
        yield {"tmp": tmp, "store": store, "port": port}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()


def files_holding(folder: Path, secret: str, skip: tuple[str, ...] = ()) -> list[str]:
    needle = secret.encode()
    return [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.name not in skip and needle in p.read_bytes()
    ]


@pytest.mark.slow  # a server, training, the three DVC stage commands and a report: 40-90 s
def test_no_password_reaches_the_store_files_reports_or_terminal(server, tmp_path) -> None:
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{server['port']}"
    work = tmp_path / "work"
    shutil.copytree(REPO / "conf", work / "conf", ignore=shutil.ignore_patterns("tuned_*"))
    env = command_env()
    outputs: list[str] = []

    # trpo-train through the server, and one against a dead port (offline, pending sync)
    done = run([str(BIN / "trpo-train"), *TINY, f"tracking.uri={uri}", "name=online"], work, env)
    outputs += [done.stdout, done.stderr]
    dead = f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}"
    done = run([str(BIN / "trpo-train"), *TINY, f"tracking.uri={dead}", "name=offline"], work, env)
    outputs += [done.stdout, done.stderr]
    assert "warning: MLflow at http://alice:***@" in done.stderr

    # the DVC stages on a params.yaml holding the password (the user's own file), with a
    # dvc.lock quoting it too: both are uploaded as artifacts, masked
    run([str(BIN / "trpo-params"), *TINY, f"tracking.uri={uri}"], work, env)
    (work / "dvc.lock").write_text(f"stages:\n  train:\n    params:\n      uri: {uri}\n")
    for stage in ("train", "evaluate", "report"):
        done = run([sys.executable, "-m", f"trpo_pipeline.stages.{stage}"], work, env)
        outputs += [done.stdout, done.stderr]

    # a report across the runs, and an error that quotes the URI
    done = run(
        [str(BIN / "trpo-report"), "--experiment", "trpo-pipeline", "--tracking-uri", uri,
         "--out", str(work / "report")],
        work,
        env,
    )  # fmt: skip
    outputs += [done.stdout, done.stderr]
    bad = subprocess.run(
        [str(BIN / "trpo-train"), *TINY, f"tracking.uri=ftp://alice:{PASSWORD}@host/x"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "ftp://alice:***@host/x" in bad.stderr
    outputs += [bad.stdout, bad.stderr]

    assert not [o for o in outputs if PASSWORD in o]
    assert files_holding(work, PASSWORD, skip=("params.yaml", "dvc.lock")) == []
    assert files_holding(server["tmp"], PASSWORD, skip=("server.log",)) == []  # store, artifacts

    from mlflow import MlflowClient

    client = MlflowClient(f"http://127.0.0.1:{server['port']}")
    runs = client.search_runs([client.get_experiment_by_name("trpo-pipeline").experiment_id])
    assert len(runs) >= 2
    for r in runs:
        assert PASSWORD not in str(r.data.params) + str(r.data.tags) + str(r.info.run_name)
    (stage_run,) = [r for r in runs if r.data.tags.get("launcher") == "dvc"]
    params_artifact = client.download_artifacts(stage_run.info.run_id, "config/params.yaml")
    text = Path(params_artifact).read_text()
    assert "http://alice:***@127.0.0.1" in text and PASSWORD not in text


# --- server commands bind to this machine --------------------------------------------------------

SERVER_COMMAND = re.compile(
    r"\b(mlflow (server|ui)|optuna-dashboard)\b.*--backend-store-uri|\bmlflow (server|ui)\s+--"
)


def test_documented_server_commands_bind_to_localhost() -> None:
    sources = [
        REPO / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "conf").rglob("*.yaml")),
        *sorted((REPO / "src" / "trpo_pipeline").rglob("*.py")),
    ]
    found = []
    for path in sources:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if SERVER_COMMAND.search(line) or " ui --backend-store-uri" in line:
                found.append((path.name, number, line))
                assert "--host 127.0.0.1" in line, f"{path}:{number}: {line.strip()}"
    assert len(found) >= 4  # README, both tracking configs, the printed hints
    assert "--host 127.0.0.1" in tracking.ui_command("sqlite:////tmp/m.db")
    from trpo_pipeline import report

    assert "--host 127.0.0.1" in (report.ui_command("sqlite:////tmp/m.db") or "")


def test_a_pipeline_config_holds_no_password_in_its_written_files(tiny_config, tmp_path) -> None:
    """config.yaml and the checkpoint's copy of the config hold the engine's settings only: no
    tracking or storage URL, so no password, reaches them (in-process, offline)."""
    from trpo_pipeline.rl.checkpoint import load_checkpoint
    from trpo_pipeline.rl.train import train

    cfg = tiny_config(
        tracking={"enabled": False, "uri": f"http://alice:{PASSWORD}@127.0.0.1:1"},
        tune={"storage": {"url": f"postgresql://bob:{PASSWORD}@db/optuna"}},
    )
    train(cfg, tmp_path / "run")
    assert files_holding(tmp_path, PASSWORD) == []
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt").config
    assert "tracking" not in saved and "tune" not in saved
    assert config_from_dict(saved).env == cfg.env  # what evaluation and resuming need
