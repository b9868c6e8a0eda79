"""`logging.trackers: [mlflow]`: an MLflow run per run folder, through `MlflowClient` (no global active run).

The tracking URI is `MLFLOW_TRACKING_URI`, else `sqlite:///<run folder>/mlflow.db` with artifacts beside it in
`<run folder>/mlartifacts`. The experiment is `MLFLOW_EXPERIMENT_NAME`, else `run.project`; the run is named
`run.name`. Its id is kept in `<run folder>/trackers.json`, so a resumed run and `open-vlm eval` in the same
folder log into the same MLflow run. Params: the resolved config flattened; metrics: every logged step; the
config file and evaluation plots as artifacts; each source as a dataset input (catalog name, version as the
digest); the latest checkpoint URI as the tag `checkpoint_uri`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from open_vlm.errors import ConfigError, DataError
from open_vlm.tracking.base import DataInput, TrackedRun, Tracker, flatten, numbers, register_tracker

log = logging.getLogger(__name__)

STATE_FILE = "trackers.json"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
BATCH = 100  # MLflow's limit on params per log_batch request
_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")  # MLflow allows these in metric and param names


def tracking_uri(folder: Path) -> str:
    """`MLFLOW_TRACKING_URI`, or a sqlite store in the run folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder.resolve()}/mlflow.db"


def _answers(uri: str, shown: str, timeout: float = 10.0) -> None:
    """`DataError` unless an HTTP server answers at `uri` (any status will do: only a connection counts); the
    message names it as `shown`."""
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.exceptions.SSLError:
        return  # a server answered; whether its certificate is accepted is MLflow's call (MLFLOW_TRACKING_INSECURE_TLS...)
    except (requests.RequestException, ValueError) as err:  # ValueError: a URL requests cannot parse
        reason = type(err).__name__ if not isinstance(err, requests.ConnectionError) else "connection failed"
        raise DataError(
            f"MLFLOW_TRACKING_URI: cannot reach '{shown}' ({reason}); start the tracking server, fix the URI, "
            "or drop mlflow from logging.trackers"
        ) from None


def metric_key(name: str) -> str:
    """A metric name MLflow accepts (`image_to_text_r@1` -> `image_to_text_r_1`)."""
    return _BAD_KEY.sub("_", name)


def dataset_entity(data: DataInput):
    """The MLflow dataset of a source: its catalog name, its version as the digest, its URL patterns."""
    from mlflow.entities import Dataset

    first = data.urls[0] if data.urls else ""
    scheme = first.split("://", 1)[0] if "://" in first else "local"
    source_type = {"https": "http", "s3": "s3", "http": "http"}.get(scheme, scheme)
    return Dataset(
        name=data.dataset or data.name,
        digest=data.version,
        source_type=source_type,
        source=json.dumps({"uri": first, "urls": list(data.urls)}),
        profile=json.dumps({"num_samples": data.num_samples, "num_shards": data.num_shards}),
    )


def input_tags(data: DataInput) -> dict[str, str]:
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    tags = {
        MLFLOW_DATASET_CONTEXT: data.context,
        "source": data.name,
        "split": data.split,
        "version": data.version,
        "weight": f"{data.weight:g}",
        "modality": data.modality,
    }
    if data.catalog_file:
        tags["catalog_file"] = data.catalog_file
    return tags


@register_tracker("mlflow")
class MlflowTracker(Tracker):
    """One MLflow run per run folder, continued on resume and by `open-vlm eval`."""

    requires = ("mlflow",)

    @classmethod
    def preflight(cls) -> None:
        """`MLFLOW_TRACKING_URI` names a store MLflow can use and, over HTTP, a server that answers. MLflow's own
        client retries a refused connection for about four minutes, at the first call, after the model is built."""
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            return  # our own sqlite store in the run folder
        shown = re.sub(r"//[^/@]*@", "//***@", uri)  # no password in the logs
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            MlflowClient(uri)
        except Exception as err:  # a scheme MLflow lacks, a store whose driver is not installed, a malformed URI
            known = re.search(r"schemes are: \[([^\]]*)\]", str(err))
            first = str(err).replace(uri, shown).splitlines()[0].split(". ")[0] if str(err) else ""
            why = f"it reads {known[1]}" if known else f"{type(err).__name__}: {first}"
            if isinstance(err, MlflowException) and not known:  # MLflow's own advice (MLFLOW_ALLOW_FILE_STORE...)
                why = " ".join(str(err).replace(uri, shown).split())
            raise ConfigError(f"MLFLOW_TRACKING_URI: MLflow cannot use '{shown}' ({why}); fix it or unset it") from None
        if uri.startswith(("http://", "https://")):
            _answers(uri, shown)

    def __init__(self, run: TrackedRun):
        super().__init__(run)
        from mlflow import MlflowClient

        for noisy in ("alembic", "mlflow.store.db.utils"):  # schema migrations of a new sqlite store
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # MLflow retries a failed request 7 times over about four minutes, holding up the step that logs: fewer,
        # shorter retries here (a setting of the user's own wins); a call that still fails is skipped (`Guarded`).
        for key, value in (("MAX_RETRIES", "2"), ("BACKOFF_FACTOR", "1"), ("TIMEOUT", "30")):
            os.environ.setdefault(f"MLFLOW_HTTP_REQUEST_{key}", value)
        self.uri = tracking_uri(run.folder)
        self.client = MlflowClient(self.uri)
        self.run_id = self._continued() or self._create()
        self.client.update_run(self.run_id, status="RUNNING")
        self._log_params()
        config = run.folder / "config.yaml"
        if config.exists():
            self.client.log_artifact(self.run_id, str(config))
        self._log_inputs()
        log.info("mlflow: run %s at %s", self.run_id, self.uri)

    # --- which run ---------------------------------------------------------------------------------
    def _state_path(self) -> Path:
        return self.run.folder / STATE_FILE

    def _continued(self) -> str | None:
        """The run id this folder logged to before, when this invocation continues it (resume or eval)."""
        if not (self.run.resumed or self.run.job == "eval") or not self._state_path().exists():
            return None
        saved = json.loads(self._state_path().read_text()).get("mlflow", {})
        if saved.get("tracking_uri") != self.uri:
            return None
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(saved["run_id"]).info.run_id
        except MlflowException:
            log.warning("mlflow: run %s is gone from %s; starting a new one", saved.get("run_id"), self.uri)
            return None

    def _create(self) -> str:
        cfg = self.run.cfg
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or cfg.run.project
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:  # our own sqlite store keeps its artifacts in the run folder too (not ./mlruns of the cwd)
            own = "MLFLOW_TRACKING_URI" not in os.environ
            location = (self.run.folder / "mlartifacts").resolve().as_uri() if own else None
            experiment_id = self.client.create_experiment(name, artifact_location=location)
        created = self.client.create_run(experiment_id, run_name=cfg.run.name, tags={"open_vlm.job": self.run.job})
        state = json.loads(self._state_path().read_text()) if self._state_path().exists() else {}
        state["mlflow"] = {"tracking_uri": self.uri, "run_id": created.info.run_id}
        self._state_path().write_text(json.dumps(state, indent=1) + "\n")
        return created.info.run_id

    # --- what it logs ------------------------------------------------------------------------------
    def _log_params(self) -> None:
        """The resolved config; on a continued run only keys it lacks (MLflow params never change)."""
        from mlflow.entities import Param

        params = {metric_key(k): v[:MAX_PARAM_LENGTH] for k, v in flatten(self.run.cfg).items()}
        if self.run.job == "eval":
            params = {k: v for k, v in params.items() if k.startswith("eval.")}
        logged = self.client.get_run(self.run_id).data.params
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:
            log.warning("mlflow: params keep their first values; changed now: %s", ", ".join(changed))
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for i in range(0, len(new), BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + BATCH])

    def _log_inputs(self) -> None:
        from mlflow.entities import DatasetInput, InputTag

        inputs = [
            DatasetInput(dataset_entity(d), [InputTag(k, v) for k, v in input_tags(d).items()]) for d in self.run.inputs
        ]
        if inputs:
            self.client.log_inputs(self.run_id, datasets=inputs)

    def log_metrics(self, step: int, record: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(k), v, now, step) for k, v in numbers(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_file(self, path: Path, folder: str = "") -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder or None)

    def log_image(self, tag: str, path: Path, step: int) -> None:
        self.log_file(path, folder=tag.rsplit("/", 1)[0] if "/" in tag else "")

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
