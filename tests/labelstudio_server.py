"""A real Label Studio 1.23.2 server on loopback, for the tests and benchmarks that talk to one.

`make labelstudio` builds what this module runs: `.labelstudio/venv` (Label Studio in its own
virtual environment: it pins its own Django stack and never enters alloop's) and
`.labelstudio/template`, a data folder migrated once. Each `LabelStudioServer.start()` copies the
template to a fresh temporary folder, so a server is healthy in seconds instead of the 20-30 s
that the migrations of a fresh folder take.

The server runs offline: no Sentry, no analytics, no version check, no converter downloads. Its
admin (`ADMIN_EMAIL`) is created at the first start with a token made up here; `restart()` keeps
the data folder, hence the admin, his token, projects and annotations.

The helpers act as real users through the REST API (``Authorization: Token <token>``):
`create_user` signs a second member of the organization up through the invite link, as a person
would, and reads his own token; `annotate`, `skip` and `update_annotation` are what the labeling
page sends when he submits, skips or updates.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
LABELSTUDIO_DIR = ROOT / ".labelstudio"
LABELSTUDIO_BIN = LABELSTUDIO_DIR / "venv" / "bin" / "label-studio"
TEMPLATE_DIR = LABELSTUDIO_DIR / "template"

ADMIN_EMAIL = "admin@alloop.example"

# Label Studio reads every setting as LABEL_STUDIO_<NAME>, HEARTEX_<NAME> or a bare <NAME>
# (core.utils.params.get_env): a HOST, PORT, USERNAME or PASSWORD that happens to be set in the
# caller's environment would reach it, so those are dropped from the server's environment.
_INHERITED_NAMES = ("HOST", "PORT", "USERNAME", "PASSWORD", "USER_TOKEN", "BASE_DATA_DIR")
_DROPPED_ENV = {
    prefix + name for name in _INHERITED_NAMES for prefix in ("", "LABEL_STUDIO_", "HEARTEX_")
}
_OFFLINE_ENV = {
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "LATEST_VERSION_CHECK": "false",
    "COLLECT_ANALYTICS": "false",
    "CONVERTER_DOWNLOAD_RESOURCES": "false",
}
# Django's runserver says where it listens; Label Studio takes the next port silently when the
# one it was given is busy, so the real one is read here
_LISTENING = re.compile(r"Starting development server at http://[^:/\s]+:(\d+)/")


class LabelStudioError(RuntimeError):
    """The server could not be started, or answered a helper's request with an error."""


def available() -> tuple[bool, str]:
    """Whether `make labelstudio` has built the server, and if not, why not.

    Returns
    -------
    (bool, str)
        ``(True, "")`` when the venv and the template exist, otherwise ``(False, reason)``.
    """
    if not LABELSTUDIO_BIN.is_file():
        return False, f"{LABELSTUDIO_BIN.relative_to(ROOT)} is missing: run `make labelstudio`"
    if not (TEMPLATE_DIR / "label_studio.sqlite3").is_file():
        return False, f"{TEMPLATE_DIR.relative_to(ROOT)} is not migrated: run `make labelstudio`"
    return True, ""


def require() -> None:
    """Skip the calling test, with the reason, when `make labelstudio` has not been run (`make
    test` runs it); in CI (``CI=true``), which must build it, fail instead."""
    import pytest

    ok, why = available()
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must build Label Studio (.ci/run runs `make labelstudio`): {why}")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as Django's server binds: connections of the killed server left in TIME_WAIT do not
        # make the port busy, a listener does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class LabelStudioServer:
    """A Label Studio server on 127.0.0.1 with its own copy of the template data folder.

    Parameters
    ----------
    workdir : Path, optional
        Folder for the data folder (``workdir/data``) and the log (``workdir/server.log``); kept
        at exit. Without it, a temporary folder is made and removed at exit.
    startup_timeout : float
        Seconds to wait for ``/health`` at each start (about 3-10 s on a quiet machine).

    Attributes
    ----------
    url : str
        ``http://127.0.0.1:PORT`` once started.
    token : str
        The admin's API token, sent as ``Authorization: Token <token>``.
    """

    def __init__(self, workdir: Path | None = None, *, startup_timeout: float = 120.0) -> None:
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be positive seconds, got {startup_timeout!r}")
        self._own_workdir = workdir is None
        self._workdir = Path(workdir) if workdir is not None else None
        self.startup_timeout = startup_timeout
        self.token = secrets.token_hex(20)  # 40 characters, the length of Label Studio's own
        self.admin_password = secrets.token_urlsafe(16)
        self.port: int | None = None
        self._last_port: int | None = None  # the port of the last start, even a failed one
        self._process: subprocess.Popen[bytes] | None = None

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise LabelStudioError("the server has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self._require_workdir() / "data"

    @property
    def log_path(self) -> Path:
        return self._require_workdir() / "server.log"

    def _require_workdir(self) -> Path:
        if self._workdir is None:
            raise LabelStudioError("the server has not been started")
        return self._workdir

    def start(self) -> LabelStudioServer:
        """Copy the template to a fresh data folder, start the server and wait for ``/health``."""
        ok, why = available()
        if not ok:
            raise LabelStudioError(why)
        if self._process is not None:
            raise LabelStudioError(f"the server is already running at {self.url}")
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="alloop-labelstudio-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        if self.data_dir.exists():
            raise LabelStudioError(f"{self.data_dir} exists already: give start() a fresh workdir")
        shutil.copytree(TEMPLATE_DIR, self.data_dir)
        self._launch(_free_port())
        return self

    def restart(self) -> LabelStudioServer:
        """Stop the server if it runs and start it again on the same data folder and token.

        The port stays the same when it is still free.
        """
        self.stop()
        port = self._last_port
        if port is None or self._workdir is None or not self.data_dir.exists():
            raise LabelStudioError("restart() needs a server that was started before")
        self._launch(port if _port_is_free(port) else _free_port())
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server's process group, then SIGKILL it after `timeout` seconds."""
        if self._process is None:
            return
        try:
            os.killpg(self._process.pid, signal.SIGTERM)
            self._process.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass  # gone already, or too slow: kill() takes whatever is left of the group
        self.kill()

    def kill(self) -> None:
        """SIGKILL the server's whole process group at once, as a crash or power cut would."""
        if self._process is None:
            return
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._process.wait()
        self._process = None

    def freeze(self) -> None:
        """SIGSTOP the server's process group: it accepts connections and answers nothing, as
        a server stuck under load does (calls time out). :meth:`thaw` resumes it."""
        if self._process is not None:
            os.killpg(self._process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT the process group :meth:`freeze` stopped."""
        if self._process is not None:
            os.killpg(self._process.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and remove the temporary folder this object made (not a given one)."""
        self.stop()
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key not in _DROPPED_ENV}
        env.update(_OFFLINE_ENV)
        env.update(
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
                # it writes a user_id file into its config folder: not into the home folder
                "XDG_CONFIG_HOME": str(self._require_workdir() / "config"),
                "LABEL_STUDIO_USERNAME": ADMIN_EMAIL,
                "LABEL_STUDIO_PASSWORD": self.admin_password,
                "LABEL_STUDIO_USER_TOKEN": self.token,
                # without it every `Authorization: Token` call answers 401
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            }
        )
        return env

    def _launch(self, port: int) -> None:
        command = [
            str(LABELSTUDIO_BIN),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            log.write(f"\n--- {' '.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command,
                cwd=self._workdir,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() and kill() reach all
            )
        self.port = None
        self._last_port = port
        try:
            self.port = self._last_port = self._wait_until_healthy(log_start)
        except BaseException:
            self.kill()
            raise

    def _wait_until_healthy(self, log_start: int) -> int:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        port: int | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LabelStudioError(
                    f"Label Studio exited with code {self._process.returncode} while starting; "
                    f"the end of {self.log_path}:\n{self._log_tail()}"
                )
            if port is None:
                with self.log_path.open("rb") as log:
                    log.seek(log_start)
                    found = _LISTENING.search(log.read().decode(errors="replace"))
                port = int(found.group(1)) if found else None
            if port is not None:
                try:
                    response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0)
                except httpx.TransportError:
                    response = None
                if response is not None and response.status_code == 200:
                    return port
            time.sleep(0.2)
        raise LabelStudioError(
            f"Label Studio did not answer /health within {self.startup_timeout:g} s; "
            f"the end of {self.log_path}:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- acting as users through the API -------------------------------------------------------

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        """An httpx client on this server, authenticated as `token` (the admin's by default)."""
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Token {token or self.token}"},
            timeout=kwargs.pop("timeout", 30.0),
            **kwargs,
        )

    def request(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> Any:
        """One API call; the decoded JSON answer (None when empty), or a LabelStudioError."""
        with self.client(token) as client:
            response = client.request(method, path, **kwargs)
        if response.is_error:
            raise LabelStudioError(
                f"{method} {path} answered {response.status_code}: {response.text[:500]}"
            )
        return response.json() if response.content else None

    def create_user(self, email: str, password: str) -> str:
        """Sign a new member of the admin's organization up; returns his API token.

        Label Studio's community edition has no API that sets a password or reads another user's
        token, so this does what a person does: open the organization's invite link
        (``GET /api/invite`` as the admin), sign up on ``/user/signup/?token=...`` (a Django form,
        with its CSRF cookie), and read his own token with the session (``GET
        /api/current-user/token``). He can annotate every project of the organization.
        """
        invite = self.request("GET", "/api/invite")
        invite_token = invite["token"]
        signup = f"/user/signup/?token={invite_token}"
        with httpx.Client(base_url=self.url, timeout=30.0) as browser:
            page = browser.get(signup)
            page.raise_for_status()
            csrf = browser.cookies.get("csrftoken")
            if csrf is None:
                raise LabelStudioError(f"GET {signup} set no csrftoken cookie")
            answer = browser.post(
                signup,
                data={"email": email, "password": password, "csrfmiddlewaretoken": csrf},
                headers={"Referer": f"{self.url}{signup}", "X-CSRFToken": csrf},
            )
            # a successful signup redirects to the projects page; a failed one shows the form again
            if answer.status_code != 302:
                raise LabelStudioError(
                    f"signing {email!r} up answered {answer.status_code}, not a redirect: "
                    f"{_form_errors(answer.text)}"
                )
            token = browser.get("/api/current-user/token")
            token.raise_for_status()
        return token.json()["token"]

    def annotate(
        self,
        task_id: int,
        choice: str | Sequence[str],
        *,
        token: str | None = None,
        from_name: str = "label",
        to_name: str = "item",
        lead_time: float | None = None,
    ) -> dict[str, Any]:
        """Submit one Choices annotation of a task as the user of `token`; returns it.
        ``choice``: one class, or several (a multi-choice answer: a label set).

        ``POST /api/tasks/{task_id}/annotations/`` with ``{"result": [one choices region],
        "was_cancelled": false}``; its ``completed_by`` is the user of the token.
        """
        body: dict[str, Any] = {
            "result": [_choices_region(choice, from_name=from_name, to_name=to_name)],
            "was_cancelled": False,
        }
        if lead_time is not None:
            body["lead_time"] = lead_time
        return self.request("POST", f"/api/tasks/{task_id}/annotations/", token=token, json=body)

    def skip(self, task_id: int, *, token: str | None = None) -> dict[str, Any]:
        """Skip a task as the user of `token`, as the labeling page's Skip button does.

        An annotation with ``"was_cancelled": true`` and ``"result": []``; the JSON export lists
        it among the task's annotations, JSON_MIN and CSV leave it out.
        """
        return self.request(
            "POST",
            f"/api/tasks/{task_id}/annotations/",
            token=token,
            params={"was_cancelled": 1},
            json={"result": [], "was_cancelled": True},
        )

    def update_annotation(
        self,
        annotation_id: int,
        choice: str,
        *,
        token: str | None = None,
        from_name: str = "label",
        to_name: str = "item",
    ) -> dict[str, Any]:
        """Change an annotation's choice (``PATCH /api/annotations/{id}/``); returns it.

        Its ``updated_at`` moves and ``updated_by`` becomes the user of `token`; its ``id`` and
        ``completed_by`` stay.
        """
        body = {
            "result": [_choices_region(choice, from_name=from_name, to_name=to_name)],
            "was_cancelled": False,
        }
        return self.request("PATCH", f"/api/annotations/{annotation_id}/", token=token, json=body)


def _choices_region(choice: str | Sequence[str], *, from_name: str, to_name: str) -> dict[str, Any]:
    choices = [choice] if isinstance(choice, str) else list(choice)
    if not choices or not all(isinstance(c, str) for c in choices):
        raise TypeError(
            "choice must be a string or a non-empty list of strings (Label Studio stores it as "
            f"given), got {choice!r}"
        )
    return {
        "from_name": from_name,
        "to_name": to_name,
        "type": "choices",
        "value": {"choices": choices},
    }


def _form_errors(html: str) -> str:
    """The messages of the sign-up form's ``<ul class="field_errors">`` lists."""
    lists = re.findall(r'class="field_errors">(.*?)</ul>', html, flags=re.DOTALL)
    errors = [e.strip() for block in lists for e in re.findall(r"<li>(.*?)</li>", block, re.DOTALL)]
    return "; ".join(errors) or "(the page names no error)"
