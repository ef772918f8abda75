"""git and DVC, through their command-line tools, for one workspace.

The CLIs are the stable, documented interface (and what an operator types); each call runs in
the workspace with analytics off and fails with the tool's own message.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.catalog import round_name
from tasks.faults import crash_point


class VersioningError(RuntimeError):
    """A git or DVC command failed."""


def _dvc_executable() -> list[str]:
    # the dvc of the interpreter running alloop, not whatever is first on PATH
    candidate = Path(sys.executable).with_name("dvc")
    return [str(candidate)] if candidate.exists() else ["dvc"]


def _run(args: list[str], cwd: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0"}
    # dvc.yaml's stage commands run `python`: make it this interpreter
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise VersioningError(
            f"`{' '.join(args)}` failed in {cwd} (exit {done.returncode}):\n"
            f"{(done.stderr or done.stdout).strip()}"
        )
    return done


def git(root: Path, *args: str, check: bool = True) -> str:
    return _run(["git", *args], root, check=check).stdout.strip()


def dvc(root: Path, *args: str, check: bool = True) -> str:
    return _run([*_dvc_executable(), *args], root, check=check).stdout.strip()


def init_repository(root: Path, *, remote_url: str) -> None:
    """git init + dvc init, a local identity if none is configured, and the default remote."""
    git(root, "init", "-q", "-b", "main")
    if not git(root, "config", "user.email", check=False):
        git(root, "config", "user.email", "alloop@localhost")
        git(root, "config", "user.name", "alloop")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.autostage", "true")
    dvc(root, "remote", "add", "-d", "workspace", remote_url)


def round_tags(root: Path) -> list[str]:
    return sorted(git(root, "tag", "--list", "round-*").split())


def committed_round(root: Path) -> int:
    """The round id that ``round.yaml`` has in the last commit (0 before any round)."""
    text = git(root, "show", "HEAD:round.yaml", check=False)
    for line in text.splitlines():
        if line.startswith("round_id:"):
            return int(line.split(":", 1)[1])
    return 0


def tag_commit_of(root: Path, tag: str) -> str | None:
    """The commit a tag points at, or None when there is no such tag."""
    found = git(root, "rev-list", "-n", "1", tag, check=False)
    return found or None


def repair_unfinished_tag(root: Path) -> int | None:
    """Tag the last committed round if a crash came between its commit and its tag.

    Returns the round id tagged, or None when nothing was missing.
    """
    round_id = committed_round(root)
    if round_id < 1 or tag_commit_of(root, round_name(round_id)):
        return None
    subject = git(root, "log", "-1", "--format=%s")
    git(root, "tag", "--annotate", round_name(round_id), "-m", subject)
    return round_id


def head_commit(root: Path) -> str:
    return git(root, "rev-parse", "HEAD")


@contextmanager
def _inside(root: Path) -> Iterator[None]:
    # DVC's Python API resolves stage paths against the current folder
    previous = Path.cwd()
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(previous)


def commit_outputs(root: Path, *, push: bool) -> None:
    """``dvc commit --force`` (and ``dvc push``) through DVC's Python API.

    The same operations as the CLI, without its start-up cost (about 1.5 s a round; see
    bench/README.md), which is most of a round's versioning time.
    """
    from dvc.repo import Repo

    dvc_log = logging.getLogger("dvc")
    level = dvc_log.level
    dvc_log.setLevel(logging.WARNING)  # "Updating lock file" on every round is noise
    try:
        with _inside(root), Repo(str(root)) as repo:
            repo.commit(force=True)
            if push:
                repo.push()
    finally:
        dvc_log.setLevel(level)


def pool_changed(root: Path) -> bool:
    """Whether ``data/pool`` differs from the last commit: files added (not yet ``dvc add``-ed)
    or a ``dvc add`` not yet committed."""
    from dvc.repo import Repo

    if git(root, "status", "--porcelain", "--", "data/pool.dvc"):
        return True
    with _inside(root), Repo(str(root)) as repo:
        return bool(repo.status(targets=["data/pool.dvc"]))


def restore_outs(root: Path, *, rev: str, outs: list[str], git_paths: tuple[str, ...] = ()) -> None:
    """Bring ``outs`` (DVC) and ``git_paths`` (git) back to what ``rev`` recorded.

    ``dvc checkout`` of the given outs against ``rev``'s ``dvc.lock`` (fetched from the remote
    when the local cache lacks them); the workspace's own ``dvc.lock`` is put back after, for
    the next ``dvc commit`` to rewrite from the files.
    """
    from dvc.exceptions import CheckoutError
    from dvc.repo import Repo

    if git_paths:
        git(root, "checkout", rev, "--", *git_paths)
    lock = root / "dvc.lock"
    kept = lock.read_bytes()
    lock.write_text(_run(["git", "show", f"{rev}:dvc.lock"], root).stdout)
    targets = [*outs, *(p for p in git_paths if p.endswith(".dvc"))]
    try:
        with _inside(root), Repo(str(root)) as repo:
            try:
                repo.checkout(targets=targets, force=True)
            except CheckoutError:
                repo.fetch(targets=targets)
                repo.checkout(targets=targets, force=True)
    finally:
        lock.write_bytes(kept)


def record_commit(root: Path, message: str, *, tag: str | None, push: bool = True) -> str:
    """DVC hashes every out into dvc.lock and its cache, the remote gets the data, git commits
    everything and tags the commit ``tag`` (None: no tag). Returns the commit id."""
    commit_outputs(root, push=push)
    git(root, "add", "--all")
    git(root, "commit", "--quiet", "--allow-empty", "-m", message)
    crash_point("before:git-tag")
    if tag is not None:
        git(root, "tag", "--annotate", tag, "-m", message.splitlines()[0])
    return head_commit(root)
