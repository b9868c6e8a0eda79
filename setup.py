from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
# Optional trackers (open_vlm/tracking): imported only when logging.trackers names them.
tracking = ["mlflow>=3.0", "tensorboard>=2.15", "psutil>=5.9"]

setup(
    name="open_vlm",
    version="0.1.0",
    description="Train vision-language models at scale on WebDataset tar shards, with exact resume.",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["open_vlm", "open_vlm.*", "launch", "launch.*"]),
    python_requires=">=3.10",
    install_requires=requirements,
    extras_require={
        "dev": ["pytest>=8", "moto[server]>=5.0", "hypothesis>=6.100", "ruff>=0.6", "boto3>=1.34", *tracking],
        "sagemaker": ["sagemaker>=3.0"],
        "tracking": tracking,  # logging.trackers mlflow / tensorboard, and CPU stats (psutil)
    },
    entry_points={"console_scripts": ["open-vlm=open_vlm.cli:main"]},
)
