"""The training image: `launch/Dockerfile` built and pushed to the account's ECR by `--build`."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from pathlib import Path

from launch.instances import LaunchError

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "launch" / "Dockerfile"
ECR_REPOSITORY = "open-vlm"
# The image holds the dependencies; the job runs the source uploaded with it. So the tag changes
# only when what the image installs changes.
RECIPE_FILES = ("launch/Dockerfile", "requirements.txt", "launch/constraints.txt", "setup.py")
PLATFORM = "linux/amd64"  # what SageMaker runs, whatever machine builds the image


def image_tag() -> str:
    digest = hashlib.sha256()
    for name in RECIPE_FILES:
        digest.update((REPO_ROOT / name).read_bytes())
    return digest.hexdigest()[:12]


def default_image(account: str, region: str) -> str:
    """The ECR URI `--build` pushes this checkout's recipe to."""
    return f"{account}.dkr.ecr.{region}.amazonaws.com/{ECR_REPOSITORY}:{image_tag()}"


def build_command(image: str) -> list[str]:
    return ["docker", "build", "--platform", PLATFORM, "-f", str(DOCKERFILE), "-t", image, str(REPO_ROOT)]


def check_command(image: str) -> list[str]:
    """A smoke test of the built image: the CI-tested versions are installed and the package imports."""
    run = ["docker", "run", "--rm", "--platform", PLATFORM, "--entrypoint", "python3", image]
    return [*run, "-m", "launch.constraints", "--check"]


def build_commands(image: str, check: bool = False) -> list[list[str]]:
    """build, [smoke test,] push: a failing step stops the rest, so a broken image is never pushed."""
    return [build_command(image), *([check_command(image)] if check else []), ["docker", "push", image]]


def _docker_ready() -> str | None:
    """None when a docker daemon answers, else why not."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if probe.returncode != 0:
        return (probe.stderr.strip().splitlines() or ["docker info failed"])[-1]
    return None


def build_and_push(image: str, boto_session, check: bool = False) -> None:
    """Build `launch/Dockerfile` (and smoke-test it with `check`), push it to ECR; `LaunchError` saying what to do."""
    problem = _docker_ready()
    if problem:
        manual = " && ".join(" ".join(cmd) for cmd in build_commands(image, check))
        raise LaunchError(
            f"--build needs a running docker daemon ({problem}); on a machine with docker run: "
            f"{manual}, then launch with --image {image}"
        )
    from botocore.exceptions import ClientError

    from launch.preflight import is_access_denied, one_line

    ecr = boto_session.client("ecr")
    try:
        try:
            ecr.create_repository(repositoryName=ECR_REPOSITORY)
        except ecr.exceptions.RepositoryAlreadyExistsException:
            pass
        auth = ecr.get_authorization_token()["authorizationData"][0]
    except ClientError as err:
        hint = "grant them (ecr:CreateRepository, ecr:GetAuthorizationToken, push)" if is_access_denied(err) else ""
        raise LaunchError(f"--build: ECR refused: {one_line(err)}; {hint or 'retry'}, or build elsewhere") from err
    user, password = base64.b64decode(auth["authorizationToken"]).decode().split(":", 1)
    login = ["docker", "login", "--username", user, "--password-stdin", auth["proxyEndpoint"]]
    done = subprocess.run(login, input=password, text=True, capture_output=True)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise LaunchError(f"--build: docker login to {auth['proxyEndpoint']} failed: {why}")
    for cmd in build_commands(image, check):
        if subprocess.run(cmd).returncode != 0:
            raise LaunchError(f"'{' '.join(cmd[:3])} ...' failed (its output is above); nothing was pushed after it")
