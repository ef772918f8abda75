"""`alloop serve`: the schedule is registered with Prefect, through its API, and served."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import BIN, make_satimage_workspace, run_cli

from flows.schedule import _free_port, get_deployment_name, server_file


def _serve(ws, *args):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen(
        [str(BIN / "alloop"), "serve", "-w", str(ws), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _deployment(api_url, name):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            try:
                return client.read_deployment_by_name(f"al_round/{name}")
            except ObjectNotFound:
                return None


def _stop(process):
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=90)
    return out


@pytest.fixture()
def workspace(tmp_path):
    root = tmp_path / "nightly"
    make_satimage_workspace(root)
    return root


def test_serve_registers_the_cron_schedule_on_its_own_local_server(workspace):
    process = _serve(workspace, "--cron", "0 2 * * *", "--timezone", "Europe/Paris")
    try:
        found = _wait_for(lambda: server_file(workspace).exists(), 240, "the local server")
        assert found
        api_url = json.loads(server_file(workspace).read_text())["api_url"]
        server_pid = json.loads(server_file(workspace).read_text())["pid"]
        name = get_deployment_name(workspace)
        deployment = _wait_for(lambda: _deployment(api_url, name), 120, "the deployment")
        (schedule,) = deployment.schedules
        assert schedule.schedule.cron == "0 2 * * *"
        assert schedule.schedule.timezone == "Europe/Paris"
        assert schedule.active
        assert deployment.parameters == {"workspace": str(workspace.resolve())}
    finally:
        out = _stop(process)
    assert process.returncode == 0, out
    # the server it started is gone, and so is its address file
    assert not server_file(workspace).exists()
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)


def test_serve_names_a_bad_cron_or_time_zone(workspace):
    for args, named in (
        (["--cron", "61 2 * * *"], "--cron"),
        (["--timezone", "Mars/Olympus"], "--timezone"),
    ):
        process = _serve(workspace, *args)
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 1 and named in out, out


@pytest.mark.slow
def test_a_run_of_the_served_deployment_is_a_round(workspace):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    process = _serve(workspace, "--cron", "0 2 * * *")
    try:
        _wait_for(lambda: server_file(workspace).exists(), 240, "the local server")
        api_url = json.loads(server_file(workspace).read_text())["api_url"]
        name = get_deployment_name(workspace)
        deployment = _wait_for(lambda: _deployment(api_url, name), 120, "the deployment")
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            with get_client(sync_client=True) as client:
                client.create_flow_run_from_deployment(deployment.id)

        def tagged():
            done = subprocess.run(
                ["git", "tag"], cwd=workspace, capture_output=True, text=True
            ).stdout.split()
            return "round-0001" in done

        _wait_for(tagged, 300, "round-0001")
    finally:
        out = _stop(process)
    assert process.returncode == 0, out


def test_deploy_and_worker_name_an_api_that_does_not_answer(workspace):
    silent = f"http://127.0.0.1:{_free_port()}/api"  # a port nothing listens on
    for args in (
        ["deploy", "-w", str(workspace), "--pool", "alloop", "--api-url", silent],
        ["worker", "--pool", "alloop", "--api-url", silent, "--run-once"],
    ):
        done = run_cli([str(BIN / "alloop"), *args], workspace)
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"no Prefect API answers at {silent}" in done.stderr
    bad_cron = run_cli(
        [
            str(BIN / "alloop"),
            "deploy",
            "-w",
            str(workspace),
            "--pool",
            "alloop",
            "--api-url",
            silent,
            "--cron",
            "61 2 * * *",
        ],
        workspace,
    )
    assert bad_cron.returncode == 1 and "--cron '61 2 * * *' is not valid" in bad_cron.stderr


@pytest.mark.slow
def test_a_deployed_round_runs_on_a_worker_of_the_work_pool(workspace, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import tracking
    from flows.runtime import QUIET
    from flows.schedule import local_server

    server_home = tmp_path / "team-server"  # the team's server, not the workspace's
    server_home.mkdir()
    with local_server(server_home) as server:
        deployed = run_cli(
            [
                str(BIN / "alloop"),
                "deploy",
                "-w",
                str(workspace),
                "--pool",
                "nightly",
                "--api-url",
                server.api_url,
                "--cron",
                "0 2 * * *",
                "--timezone",
                "Europe/Paris",
            ],
            workspace,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert "created work pool nightly" in deployed.stdout
        name = get_deployment_name(workspace)
        deployment = _deployment(server.api_url, name)
        assert deployment.work_pool_name == "nightly"
        assert deployment.parameters == {"workspace": str(workspace.resolve())}
        (schedule,) = deployment.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "Europe/Paris")
        # every round's process is told to send nothing home, whatever the worker's environment
        assert deployment.job_variables["env"] == QUIET
        assert deployment.global_concurrency_limit.limit == 1

        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            with get_client(sync_client=True) as client:
                run = client.create_flow_run_from_deployment(deployment.id)
        worker = run_cli(
            [
                str(BIN / "alloop"),
                "worker",
                "--pool",
                "nightly",
                "--api-url",
                server.api_url,
                "--run-once",
            ],
            tmp_path,
        )
        assert worker.returncode == 0, worker.stdout + worker.stderr
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run.id).state
        assert state.is_completed(), state

    tags = subprocess.run(["git", "tag"], cwd=workspace, capture_output=True, text=True)
    assert tags.stdout.split() == ["round-0001"]
    head = subprocess.run(
        ["git", "rev-parse", "round-0001^{commit}"], cwd=workspace, capture_output=True, text=True
    ).stdout.strip()
    (mlflow_run,) = tracking.list_round_runs(workspace)
    assert (mlflow_run["round_id"], mlflow_run["status"]) == (1, "FINISHED")
    assert mlflow_run["tags"]["alloop.git_commit"] == head
