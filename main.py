"""jaxdiff command line: train a score model, sample from it, evaluate it.

    python main.py --config=configs/mnist.py --workdir=runs/mnist
    python main.py --workdir=runs/mnist --mode=sample
    python main.py --config=configs/classifier_mnist.py --workdir=runs/classifier_mnist
    python main.py --workdir=runs/mnist --mode=eval
    python main.py --workdir=runs/mnist --mode=sample --step=2000
    python main.py --list_configs

Without --config, a workdir that holds a run uses its config.json (sampling,
evaluating, editing, resuming). Any config field can be overridden:
--config.training.batch_size=256.
SIGTERM or Ctrl-C stops training after a checkpoint, sampling after the current batch
(exit 0); the same command resumes.
"""

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging

from jaxdiff.commands import config_flag
from jaxdiff.core.errors import UserError

FLAGS = flags.FLAGS
config_flag.define_config_flag()
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_bool(
    "list_configs", False, "Print the config files, their variants and what each is; exit."
)
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "sample", "eval", "plot", "inpaint", "edit", "interpolate"],
    "train: what config.task names (score model or feature classifier); sample: draw "
    "from the latest checkpoint (or --step); eval: sample-quality metrics (a classifier "
    "run: its test accuracy); plot: redraw the loss curves from metrics.jsonl; "
    "inpaint, edit, interpolate: controllable generation from editing.source "
    "(docs/editing.md).",
)
flags.DEFINE_integer(
    "step",
    None,
    "--mode=sample, eval, inpaint, edit, interpolate: the checkpoint to use, by training "
    "step (see <workdir>/checkpoints/); the latest if unset.",
)
flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume a workdir even though the config differs from its config.json where it matters.",
)
flags.DEFINE_string(
    "compilation_cache",
    os.path.join(os.path.expanduser("~"), ".cache", "jaxdiff", "xla"),
    "Persistent XLA compilation cache: a rerun (a resume after preemption, sampling) "
    "loads its programs instead of compiling them. Empty disables it; "
    "JAX_COMPILATION_CACHE_DIR, when set, takes precedence.",
)
flags.DEFINE_bool(
    "keep_freed_memory",
    True,
    "Keep freed host memory for reuse (glibc's malloc), so that on CPU each train call "
    "reuses its temporary buffers instead of page-faulting them in afresh; the process "
    "then holds its peak memory until it exits (docs/performance.md).",
)
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 for multi-process runs.")
flags.DEFINE_integer("num_processes", 0, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", -1, "This process's index (with --coordinator_address).")


def fail(message: object) -> None:
    """Prints one `error:` line to stderr and exits with status 2."""
    text = " ".join(str(message).replace("\\n", " ").split())
    print(f"error: {text}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # os._exit, not sys.exit: after a failed operation, orbax's background threads
    # can print tracebacks during interpreter shutdown, burying the one line. Our
    # files are closed by then (train_and_evaluate and sample close them in `finally`).
    os._exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with config mistakes (a bad file, unknown field, bad value) as one line.

    Without --config, a --workdir that holds a run supplies its config.json.
    """
    try:
        return FLAGS(config_flag.with_run_config(argv))
    except (UserError, flags.Error) as e:  # UserError: the config file (missing, broken, ...).
        fail(e)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        detail = str(e).replace("\\'", "").replace("\\n", ". ")
        if len(detail) > 1 and detail[0] == detail[-1] and detail[0] in "'\"":
            detail = detail[1:-1]  # A KeyError's message comes quoted.
        fail(f"bad --config override: {detail}")


def run_mode(mode: str, config, workdir: str, step: int | None = None) -> None:
    """Does what --mode says for the task the config names (`step`: --step, None if unset)."""
    task = config.task
    if task not in ("diffusion", "classifier"):
        raise UserError(f"unknown task {task!r}; choose one of ['classifier', 'diffusion']")
    if step is not None and (task != "diffusion" or mode in ("train", "plot")):
        what = f"--mode={mode}" if task == "diffusion" else "a classifier run"
        raise UserError(
            "--step chooses the checkpoint of a score model to sample, evaluate or edit with; "
            f"{what} takes no --step"
        )
    if mode == "plot":
        from jaxdiff.training.loss_curve import write_loss_curves

        paths = write_loss_curves(workdir)
        if not paths:
            raise UserError(f"no metrics.jsonl with losses in {workdir}: train first")
        print("\n".join(paths))
    elif task == "classifier":
        from jaxdiff.training import classifier

        if mode == "train":
            name = FLAGS["config"].config_filename
            classifier.train_classifier(config, workdir, FLAGS.allow_config_change, name)
        elif mode == "eval":
            print(classifier.test_accuracy_line(workdir, config))
        else:
            raise UserError(f"a classifier run has nothing to {mode}; use --mode=train or eval")
    elif mode == "train":
        from jaxdiff.training.score import train_and_evaluate

        # The name summary.json records: the --config argument (a run's config.json if none).
        name = FLAGS["config"].config_filename
        train_and_evaluate(config, workdir, FLAGS.allow_config_change, config_name=name)
    elif mode == "sample":
        from jaxdiff.commands import sample

        sample.run(config, workdir, step)
    elif mode in ("inpaint", "edit", "interpolate"):
        from jaxdiff.commands import edit
        from jaxdiff.pipeline import load

        edit.check_editing_config(config, mode)  # Before the checkpoint is loaded.
        edit.run(load(workdir, step=step, config=config), mode)
    else:
        from jaxdiff.evaluation.evaluate import evaluate, summary_line

        print(summary_line(evaluate(config, workdir, step)), flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.list_configs:
        from jaxdiff import configs

        print("\n".join(configs.list_configs()))
        return
    try:
        config_flag.check_workdir(FLAGS.workdir)
        if FLAGS.config is None:
            raise UserError(config_flag.missing_config(FLAGS.mode, FLAGS.workdir))
    except UserError as e:
        fail(e)
    # Our progress lines at INFO; libraries (orbax is chatty) at WARNING.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("jaxdiff").setLevel(logging.INFO)
    config = FLAGS.config

    if FLAGS.keep_freed_memory:  # Before JAX starts: the setting needs it.
        from jaxdiff.core.host_memory import keep_freed_memory

        keep_freed_memory()

    from jaxdiff.core import parallel
    from jaxdiff.core.preemption import Preempted

    if FLAGS.compilation_cache and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        import jax

        jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
        # Everything that took a second to compile: the U-Nets' steps and samplers.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

    try:
        parallel.initialize_distributed(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
        run_mode(FLAGS.mode, config, FLAGS.workdir, FLAGS.step)
    except (UserError, FloatingPointError) as e:
        fail(e)
    except Preempted as e:  # Asked to stop, and stopped cleanly: not a failure.
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
