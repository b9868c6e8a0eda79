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
RECIPE_FILES = ("launch/Dockerfile", "requirements.txt", "setup.py")


def image_tag() -> str:
    digest = hashlib.sha256()
    for name in RECIPE_FILES:
        digest.update((REPO_ROOT / name).read_bytes())
    return digest.hexdigest()[:12]


def default_image(account: str, region: str) -> str:
    """The ECR URI `--build` pushes this checkout's recipe to."""
    return f"{account}.dkr.ecr.{region}.amazonaws.com/{ECR_REPOSITORY}:{image_tag()}"


def build_commands(image: str) -> list[list[str]]:
    return [
        ["docker", "build", "-f", str(DOCKERFILE), "-t", image, str(REPO_ROOT)],
        ["docker", "push", image],
    ]


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


def build_and_push(image: str, boto_session) -> None:
    """Build `launch/Dockerfile` and push it to ECR; `LaunchError` saying what to do without docker."""
    problem = _docker_ready()
    if problem:
        manual = " && ".join(" ".join(cmd) for cmd in build_commands(image))
        raise LaunchError(
            f"--build needs a running docker daemon ({problem}); on a machine with docker run: "
            f"{manual}, then launch with --image {image}"
        )
    ecr = boto_session.client("ecr")
    try:
        ecr.create_repository(repositoryName=ECR_REPOSITORY)
    except ecr.exceptions.RepositoryAlreadyExistsException:
        pass
    auth = ecr.get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(auth["authorizationToken"]).decode().split(":", 1)
    login = ["docker", "login", "--username", user, "--password-stdin", auth["proxyEndpoint"]]
    subprocess.run(login, input=password, text=True, check=True, capture_output=True)
    for cmd in build_commands(image):
        subprocess.run(cmd, check=True)


def check_image_exists(image: str, boto_session) -> None:
    """Fail before submitting when the default image was never pushed (a job would fail at start)."""
    repo_and_tag = image.split("/", 1)[1]
    repository, _, tag = repo_and_tag.partition(":")
    ecr = boto_session.client("ecr")
    try:
        ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except (ecr.exceptions.ImageNotFoundException, ecr.exceptions.RepositoryNotFoundException) as err:
        raise LaunchError(
            f"image {image} is not in ECR; build it with --build (needs docker) or pass --image URI"
        ) from err
