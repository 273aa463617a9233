"""What training records: `metrics.jsonl`, TensorBoard summaries, the parameter table."""

import json
import logging
import os
import time
from typing import Any

import numpy as np
from clu import parameter_overview
from tensorboardX import SummaryWriter

logger = logging.getLogger("jaxdiff")


class MetricsLog:
    """Writes one JSON object per log interval and TensorBoard summaries; only process 0 writes.

    `metrics.jsonl` is what plots and benchmarks read; `tensorboard/` holds the
    same scalars and the sample grids as TensorBoard event files (tensorboardX,
    no TensorFlow needed).
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
        self._summary = SummaryWriter(
            os.path.join(workdir, "tensorboard"),
            # TensorBoard hides what an earlier writer logged past the resumed step,
            # as `_drop_records_after` does for metrics.jsonl.
            purge_step=None if resume_step is None else resume_step + 1,
            # tensorboardX names its file by the second and truncates it: a writer
            # started in the same second as the last one would erase its events.
            filename_suffix=f".{time.time_ns()}",
        )

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Records scalar metrics for `step`."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in record.items():
            if name != "step":
                self._summary.add_scalar(name, value, record["step"])
        self._summary.flush()

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        """Records an HWC uint8 image (a sample grid) for `step` in TensorBoard."""
        if self.enabled:
            self._summary.add_image(name, image, int(step), dataformats="HWC")
            self._summary.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._summary is not None:
            self._summary.close()


def write_parameter_overview(directory: str, params: Any) -> str:
    """Writes clu's table of `params` (name, shape, dtype, size; a total line) to a file.

    Shapes only: nothing is computed or copied from the devices, so any process
    may call it on sharded parameters; the caller picks the one that writes.

    Returns:
      The path of `directory/parameters.txt`.
    """
    table = parameter_overview.get_parameter_overview(params, include_stats=False)
    path = os.path.join(directory, "parameters.txt")
    with open(path, "w") as f:
        f.write(table + "\n")
    return path


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
