"""Metrics: stdout, `workdir/metrics.jsonl` always, TensorBoard when TensorFlow is installed."""

import importlib.util
import json
import logging
import os

import numpy as np

logger = logging.getLogger("jaxdiff")


class MetricsLog:
    """Writes one JSON object per log interval; only process 0 writes anything.

    clu's metric writers import TensorFlow, so they are used only when it is
    installed; `metrics.jsonl` is always written (plots and benchmarks read it).
    """

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self._file = None
        self._summary = None
        if not enabled:
            return
        path = os.path.join(workdir, "metrics.jsonl")
        if resume_step is not None:
            _drop_records_after(path, resume_step)
        self._file = open(path, "a")  # noqa: SIM115
        if importlib.util.find_spec("tensorflow") is not None:
            from clu import metric_writers

            self._summary = metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Records scalar metrics for `step`."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._summary is not None:
            self._summary.write_scalars(step, metrics)

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        """Sends an HWC uint8 image to TensorBoard, if it is available."""
        if self.enabled and self._summary is not None:
            self._summary.write_images(step, {name: image[None]})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._summary is not None:
            self._summary.close()


def _drop_records_after(path: str, step: int) -> None:
    """Rewrites `path` (atomically) without records past `step` or torn lines.

    A run killed after logging step n but before checkpointing it resumes from
    an earlier step and logs n again; the file keeps one record per step.
    """
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    if kept != lines:
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)
