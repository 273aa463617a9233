"""MetricsLog's TensorBoard event files, read back without TensorFlow or TensorBoard."""

import io
import json
import pathlib
import struct
import subprocess
import sys

import numpy as np
from PIL import Image
from tensorboardX.proto import event_pb2

from jaxdiff.training.reporting import MetricsLog, write_parameter_overview

ROOT = pathlib.Path(__file__).resolve().parents[1]


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bit by bit: the checksum of TFRecord framing."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path) -> list[event_pb2.Event]:
    """The events of one file: TFRecords (u64 length, its masked CRC, data, the data's CRC)."""
    blob, events, at = path.read_bytes(), [], 0
    while at < len(blob):
        header = blob[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", blob[at + 8 : at + 12])
        data = blob[at + 12 : at + 12 + length]
        (data_crc,) = struct.unpack("<I", blob[at + 12 + length : at + 16 + length])
        assert header_crc == masked_crc(header) and data_crc == masked_crc(data)
        events.append(event_pb2.Event.FromString(data))
        at += 16 + length
    return events


def event_files(workdir) -> list:
    """The event files in the order TensorBoard reads them (by name)."""
    return sorted((workdir / "tensorboard").glob("events.out.tfevents.*"))


def visible(workdir) -> dict[tuple[str, int], float]:
    """(tag, step) -> scalar as TensorBoard shows it: a writer's start event with a
    step hides what earlier files logged at that step or later."""
    scalars = {}
    for path in event_files(workdir):
        for event in read_events(path):
            if event.session_log.status == event_pb2.SessionLog.START:
                scalars = {k: v for k, v in scalars.items() if k[1] < event.step}
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars[value.tag, event.step] = value.simple_value
    return scalars


def test_scalars_and_sample_grid_reach_tensorboard(tmp_path):
    log = MetricsLog(str(tmp_path))
    log.write(1, {"loss": 0.5, "learning_rate": 1e-3})
    log.write(2, {"loss": np.float32(0.25), "learning_rate": 2e-3})
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 256, (34, 62, 1), dtype=np.uint8)  # MNIST's: one channel
    colour = rng.integers(0, 256, (18, 18, 3), dtype=np.uint8)
    log.write_image(2, "samples", grid)
    log.write_image(3, "colour", colour)
    log.close()

    # metrics.jsonl stays one JSON object per line, as plots and benchmarks read it.
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == [
        '{"step": 1, "loss": 0.5, "learning_rate": 0.001}',
        '{"step": 2, "loss": 0.25, "learning_rate": 0.002}',
    ]
    (path,) = event_files(tmp_path)
    events = read_events(path)
    assert events[0].file_version == "brain.Event:2"
    assert visible(tmp_path) == {
        ("loss", 1): 0.5,
        ("learning_rate", 1): np.float32(1e-3),
        ("loss", 2): 0.25,
        ("learning_rate", 2): np.float32(2e-3),
    }
    images = {
        value.tag: (event.step, value.image) for event in events for value in event.summary.value
    }
    step, image = images["samples"]
    pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
    assert step == 2 and (image.height, image.width) == (34, 62)
    # Grayscale is sent as RGB, each channel the grid.
    np.testing.assert_array_equal(pixels, np.repeat(grid, 3, axis=-1))
    step, image = images["colour"]
    pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
    assert step == 3
    np.testing.assert_array_equal(pixels, colour)


def test_a_resumed_log_hides_what_was_logged_past_its_checkpoint(tmp_path):
    first = MetricsLog(str(tmp_path), resume_step=0)
    for step in (1, 2, 3, 4, 5):
        first.write(step, {"loss": float(step)})
    first.close()  # Killed after step 5, its last checkpoint at step 2.
    # Started in the same second: the first writer's file stays whole.
    resumed = MetricsLog(str(tmp_path), resume_step=2)
    for step in (3, 4):
        resumed.write(step, {"loss": 10.0 * step})
    resumed.close()

    assert len(event_files(tmp_path)) == 2
    assert visible(tmp_path) == {("loss", 1): 1, ("loss", 2): 2, ("loss", 3): 30, ("loss", 4): 40}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == [{"step": s, "loss": v} for s, v in ((1, 1), (2, 2), (3, 30), (4, 40))]


def test_other_processes_write_nothing(tmp_path):
    log = MetricsLog(str(tmp_path), enabled=False)
    log.write(1, {"loss": 1.0})
    log.write_image(1, "samples", np.zeros((4, 4, 1), np.uint8))
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_parameter_overview_file(tmp_path):
    params = {"Conv_0": {"kernel": np.zeros((3, 3, 1, 8), np.float32), "bias": np.zeros(8)}}
    path = write_parameter_overview(str(tmp_path), params)
    text = (tmp_path / "parameters.txt").read_text()
    assert path == str(tmp_path / "parameters.txt")
    assert "| Conv_0/kernel | (3, 3, 1, 8) | float32 | 72   |" in text
    assert text.splitlines()[-1] == "Total: 80 -- 352 bytes"


def test_no_module_imports_tensorflow():
    # TensorBoard summaries, data reading and everything else run without it.
    script = (
        "import importlib, pkgutil, sys, jaxdiff\n"
        "for m in pkgutil.walk_packages(jaxdiff.__path__, 'jaxdiff.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
