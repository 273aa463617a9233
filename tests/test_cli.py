"""main.py on bad input: one `error:` line, a non-zero exit, and the workdir untouched; its
config sources (a file, a run's config.json, the workdir's run), `--list_configs`, the
suggested command lines, and the line and summary.json at the end of training."""

import json
import os
import shlex
import subprocess
import sys

import ml_collections
import pytest
from absl import flags

from jaxdiff import configs
from jaxdiff.commands import config_flag
from jaxdiff.core.errors import UserError

from .conftest import ROOT, xla_flags

# End-to-end: main.py processes that build a model or train (not in the fast tier).
slow = pytest.mark.slow


def snapshot(path):
    """Every file under path with its size and mtime: equal snapshots mean nothing changed."""
    if not path.exists():
        return None
    return sorted(
        (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")
    )


def run_main(args, env=None):
    return subprocess.run(
        [sys.executable, "main.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, **(env or {})),
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture
def workdir(tmp_path):
    """An existing workdir holding a file that must survive every failed run."""
    path = tmp_path / "work"
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    return path


CASES = {
    "unknown dataset": (["--config.data.dataset=svhn"], {}, ["'svhn'", "cifar10", "mnist"]),
    "unknown model": (["--config.model.name=resnet"], {}, ["'resnet'", "small_unet", "unet"]),
    "unknown sde": (["--config.sde.name=vx"], {}, ["'vx'", "subvp", "ve", "vp"]),
    "unknown sampler": (["--config.sampling.sampler=ddpm"], {}, ["'ddpm'", "dpm_solver++", "edm"]),
    "shape does not fit": (
        ["--config.model.name=unet", "--config.model.channels=(8,8,8,8,8,8,8)"],
        {},
        ["28x28", "too small", "7 levels"],
    ),
    "batch not divisible": (
        ["--config.training.batch_size=12"],
        {"XLA_FLAGS": xla_flags(8)},
        ["batch_size=12", "8 devices"],
    ),
    "negative steps": (["--config.training.num_steps=-5"], {}, ["num_steps", ">= 0"]),
    "unknown noise distribution": (
        ["--config.training.noise_distribution=beta"],
        {},
        ["'beta'", "uniform", "log_normal"],
    ),
    "unknown weighting": (
        ["--config.training.loss_weighting=snr"],
        {},
        ["'snr'", "std2", "edm", "min_snr"],
    ),
    "unknown on_device": (["--config.data.on_device=maybe"], {}, ["data.on_device", "'maybe'"]),
    "folder without a path": (["--config.data.dataset=folder"], {}, ["needs data.path"]),
    "zero batch size": (["--config.training.batch_size=0"], {}, ["batch_size", "positive"]),
    "unknown non-finite policy": (
        ["--config.training.on_nonfinite=ignore"],
        {},
        ["training.on_nonfinite", "'stop' or 'skip'", "'ignore'"],
    ),
    "unknown config field": (["--config.training.batchsize=3"], {}, ["batch_size"]),
    "prompt for an unconditional model": (
        ["--config.sampling.prompt=3"],
        {},
        ["sampling.prompt='3'", "model.conditional=True"],
    ),
    "unknown prompt word": (
        ["--config.model.conditional=True", "--config.sampling.prompt=3,eleven"],
        {},
        ["'eleven'", "seven", "integers 0-9"],
    ),
    "latent with flips": (
        ["--config.autoencoder.enabled=True", "--config.data.random_flip=True"],
        {},
        ["data.random_flip", "autoencoder.enabled"],
    ),
    "unknown reconstruction loss": (
        ["--config.autoencoder.enabled=True", "--config.autoencoder.reconstruction_loss=l3"],
        {},
        ["'l3'", "l1", "mse"],
    ),
    "negative guidance": (
        ["--config.model.conditional=True", "--config.sampling.guidance_scale=-1"],
        {},
        ["guidance_scale", ">= 0"],
    ),
    "missing data": (
        # download=False: the error without touching the network (the download's
        # own errors are tested offline in tests/test_prepare.py).
        ["--config.data.download=False"],
        {"TFDS_DATA_DIR": "/nonexistent/tfds"},
        ["/nonexistent/tfds", "python -m jaxdiff.prepare mnist"],
    ),
}


@slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_training_input(case, workdir):
    args, env, fragments = CASES[case]
    before = snapshot(workdir)
    result = run_main(["--config=configs/mnist.py", f"--workdir={workdir}", *args], env)
    assert_one_line_error(result, *fragments)
    assert snapshot(workdir) == before


@slow
def test_bad_training_input_does_not_create_the_workdir(tmp_path):
    result = run_main(
        ["--config=configs/mnist.py", f"--workdir={tmp_path / 'new'}", "--config.sde.name=vx"]
    )
    assert_one_line_error(result, "'vx'")
    assert not (tmp_path / "new").exists()


@slow
def test_sample_without_checkpoint(workdir):
    before = snapshot(workdir)
    result = run_main(["--config=configs/mnist.py", f"--workdir={workdir}", "--mode=sample"])
    assert_one_line_error(result, "no checkpoint", str(workdir))
    assert snapshot(workdir) == before


@slow
def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_main(
        [
            "--config=configs/mnist.py",
            f"--workdir={blocker / 'run'}",
            "--config.data.train_split=train[:64]",
        ]
    )
    assert_one_line_error(result, "cannot create workdir", str(blocker / "run"))


def test_missing_config_file(workdir):
    result = run_main(["--config=configs/nope.py", f"--workdir={workdir}"])
    assert_one_line_error(result, "--config=configs/nope.py: no such file", "--list_configs")
    assert result.returncode == 2


def test_unknown_config_variant(workdir):
    result = run_main(["--config=configs/mnist_latent.py:large", f"--workdir={workdir}"])
    assert_one_line_error(
        result, "unknown variant 'large'; variants of configs/mnist_latent.py: cond"
    )


def test_unknown_mode(workdir):
    result = run_main(["--config=configs/mnist.py", f"--workdir={workdir}", "--mode=eval2"])
    assert_one_line_error(result, "train|sample|eval|plot")


# ---------------------------------------------------------------------------
# Where the config comes from: a file, a run's config.json, or the workdir's run


def parse_command_line(argv):
    """--workdir, --mode and --config parsed from `argv` as main.py parses them."""
    values = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    flags.DEFINE_string("mode", "train", "", flag_values=values)
    argv = config_flag.with_run_config(argv)
    config_flag.define_config_flag(values, sys_argv=argv)
    values(argv)
    return values


@pytest.fixture
def run_dir(tmp_path):
    """A workdir holding a run's config.json (a conditional latent config, seed 7)."""
    from jaxdiff.training.workdir import write_config

    config = configs.get_config("mnist_latent:cond")
    config.seed = 7
    path = tmp_path / "run"
    path.mkdir()
    write_config(config, str(path))
    return path


def test_without_config_a_run_uses_its_config_json_with_the_overrides(run_dir):
    from jaxdiff.training.workdir import read_config

    overrides = ["--config.sampling.num_steps=20", "--config.model.attention_resolutions=(7,)"]
    for workdir in ([f"--workdir={run_dir}"], ["--workdir", str(run_dir)]):
        config = parse_command_line(["main.py", *workdir, "--mode=sample", *overrides]).config
        expected = read_config(str(run_dir))
        expected.sampling.num_steps = 20
        expected.model.attention_resolutions = (7,)
        assert config.to_json() == expected.to_json()
        assert config.seed == 7 and config.model.conditional and config.autoencoder.enabled
    # Training too: the run resumes with its own config.
    assert parse_command_line(["main.py", f"--workdir={run_dir}"]).config.seed == 7


def test_a_run_config_json_is_a_config_file(run_dir, tmp_path):
    values = parse_command_line(
        ["main.py", f"--config={run_dir / 'config.json'}", f"--workdir={tmp_path / 'new'}"]
    )
    assert values.config.seed == 7 and values.config.model.channels == (32, 64)
    # An explicit --config wins over the workdir's run.
    argv = ["main.py", "--config=configs/mnist.py", f"--workdir={run_dir}"]
    assert config_flag.with_run_config(argv) == argv


def test_overrides_without_a_config_are_one_error(tmp_path):
    for mode, fragment in [("train", "--config is needed to start a run"), ("eval", "--mode=eval")]:
        argv = ["main.py", f"--workdir={tmp_path}", f"--mode={mode}", "--config.seed=3"]
        with pytest.raises(UserError, match=fragment):
            config_flag.with_run_config(argv)
    # Without overrides the command line is left for main.py to refuse.
    argv = ["main.py", f"--workdir={tmp_path}", "--mode=sample"]
    assert config_flag.with_run_config(argv) == argv


def test_workdir_checks(tmp_path):
    config_flag.check_workdir(str(tmp_path))
    config_flag.check_workdir(str(tmp_path / "not_yet"))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"a_file is a file, not a directory"):
        config_flag.check_workdir(str(tmp_path / "a_file"))
    with pytest.raises(UserError, match="--workdir is required"):
        config_flag.check_workdir(None)


BAD_FILES = {
    "syntax.py": "def get_config(:\n    pass\n",
    "no_get_config.py": "CONFIG = {}\n",
    "raises.py": "import ml_collections\n\nVALUE = undefined_name\n",
    "returns_none.py": "def get_config():\n    return None\n",
    "broken.json": '{"seed": 1,',
}

# --config=<spec> -> the start of the error; {tmp} is the directory of BAD_FILES.
CONFIG_FILE_ERRORS = {
    "configs/nope.py": "--config=configs/nope.py: no such file (python main.py --list_configs",
    "README.md": "--config=README.md is not a Python config file (line ",
    "{tmp}/syntax.py": "--config={tmp}/syntax.py: syntax error at line 1: invalid syntax",
    "{tmp}/no_get_config.py": "--config={tmp}/no_get_config.py: the file defines no get_config()",
    "{tmp}/raises.py": "--config={tmp}/raises.py: loading the file raised NameError: name "
    "'undefined_name' is not defined (line 3)",
    "{tmp}/returns_none.py": "--config={tmp}/returns_none.py: get_config() returned NoneType, "
    "not an ml_collections.ConfigDict",
    "configs/mnist.py:cond": "--config=configs/mnist.py:cond: configs/mnist.py has no variants",
    "configs/mnist_latent.py:bogus": "--config=configs/mnist_latent.py:bogus: unknown variant "
    "'bogus'; variants of configs/mnist_latent.py: cond",
    "configs/folder64.py:big": "--config=configs/folder64.py:big: unknown variant 'big'; "
    "variants of configs/folder64.py: cond, classifier",
    "configs": "--config=configs is a directory, not a config file",
    "{tmp}/broken.json": "{tmp}/broken.json is not valid JSON",
    "{tmp}/broken.json:cond": "--config={tmp}/broken.json:cond: a saved config has no variants",
}


@pytest.mark.parametrize("spec", sorted(CONFIG_FILE_ERRORS))
def test_a_config_file_that_gives_no_config_is_one_line(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    for name, text in BAD_FILES.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError) as error:
        config_flag.load(spec.format(tmp=tmp_path))
    message = str(error.value)
    assert message.startswith(CONFIG_FILE_ERRORS[spec].format(tmp=tmp_path)), message
    assert "\n" not in message


def test_config_files_and_variants_load_as_by_name(monkeypatch):
    monkeypatch.chdir(ROOT)
    for name in ("mnist", "mnist_latent:cond", "fashion_mnist_cond:cpu"):
        module, _, variant = name.partition(":")
        spec = f"configs/{module}.py" + (f":{variant}" if variant else "")
        assert config_flag.load(spec).to_json() == configs.get_config(name).to_json()


# Through main.py (no JAX is imported before these errors): one line, exit status 2,
# the workdir untouched. {w}: an empty workdir; {file}: a file; {bad}: BAD_FILES' directory.
COMMAND_LINE_ERRORS = {
    "not a config file": (["--config=README.md", "--workdir={w}"], "is not a Python config"),
    "no variants": (["--config=configs/mnist.py:cond", "--workdir={w}"], "has no variants"),
    "no get_config": (
        ["--config={bad}/no_get_config.py", "--workdir={w}"],
        "the file defines no get_config()",
    ),
    "workdir is a file": (["--workdir={file}", "--mode=sample"], "is a file, not a directory"),
    "no workdir": (["--mode=sample"], "--workdir is required"),
    "training without a config": (["--workdir={w}"], "--config is needed to start a run"),
    "sampling without a run": (
        ["--workdir={w}", "--mode=sample"],
        "--mode=sample without --config needs the --workdir of a trained run",
    ),
}


@pytest.mark.parametrize("case", sorted(COMMAND_LINE_ERRORS))
def test_command_line_mistakes_are_one_line_before_jax(case, workdir, tmp_path):
    args, fragment = COMMAND_LINE_ERRORS[case]
    for name, text in BAD_FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "a_file").write_text("")
    before = snapshot(workdir)
    paths = dict(w=workdir, file=tmp_path / "a_file", bad=tmp_path)
    result = run_main([arg.format(**paths) for arg in args])
    assert_one_line_error(result, fragment)
    assert result.returncode == 2
    assert snapshot(workdir) == before


def test_an_override_of_a_json_config_names_the_field(run_dir, workdir):
    result = run_main(
        [f"--config={run_dir / 'config.json'}", f"--workdir={workdir}", "--config.seeed=1"]
    )
    assert_one_line_error(result, 'bad --config override: seeed. Did you mean "seed"')


@slow
def test_sampling_a_run_with_only_its_workdir(run_dir):
    """The run's config reaches sampling, the override with it (an unknown sampler)."""
    result = run_main([f"--workdir={run_dir}", "--mode=sample", "--config.sampling.sampler=ddpm"])
    assert_one_line_error(result, "unknown sampling.sampler 'ddpm'")


# ---------------------------------------------------------------------------
# --list_configs


def test_list_configs_names_every_config_file_with_its_variants():
    lines = configs.list_configs()
    files = sorted(
        p.name
        for p in (ROOT / "configs").glob("*.py")
        if p.name not in ("__init__.py", "default.py")
    )
    assert sorted(line.split()[0].split("[")[0].removeprefix("configs/") for line in lines) == files
    by_file = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert by_file["configs/mnist.py"].startswith("MNIST, unconditional")
    assert by_file["configs/mnist_latent.py[:cond]"].startswith("MNIST, latent diffusion")
    assert "configs/folder64.py[:cond|classifier]" in by_file
    assert (
        by_file["configs/mnist_seed.py[:cond]"] == "The former name of configs/mnist_original.py."
    )


def test_list_configs_command():
    result = run_main(["--list_configs"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == configs.list_configs()


# ---------------------------------------------------------------------------
# Suggested command lines


def test_suggested_overrides_paste_into_bash_and_match_the_run(tmp_path):
    from jaxdiff.training.workdir import check_model_config, write_config

    run = configs.get_config("mnist")
    run.model.attention_resolutions = (7,)
    run.data.class_names = ("a b", "T-shirt/top")
    (tmp_path / "run").mkdir()
    write_config(run, str(tmp_path / "run"))
    here = configs.get_config("mnist")
    here.model.attention_resolutions = (14,)
    with pytest.raises(UserError) as error:
        check_model_config(here, str(tmp_path / "run"))
    suggestion = str(error.value).split("; add ", 1)[1]
    assert suggestion == (
        """'--config.data.class_names=("a b","T-shirt/top")' """
        "'--config.model.attention_resolutions=(7,)'"
    )
    pasted = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' {suggestion}"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    (tmp_path / "here").mkdir()
    write_config(here, str(tmp_path / "here"))
    config_file = tmp_path / "here" / "config.json"
    values = parse_command_line(["main.py", f"--config={config_file}", *pasted])
    check_model_config(values.config, str(tmp_path / "run"))  # Nothing differs any more.


# ---------------------------------------------------------------------------
# The end of training


def test_the_score_models_last_line_says_how_to_sample(tmp_path, monkeypatch):
    from jaxdiff.training.autoencoder import AutoencoderTrainer
    from jaxdiff.training.score import ScoreTrainer

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "my run"
    trainer = object.__new__(ScoreTrainer)  # Only what the line needs.
    trainer.directory = str(run)
    trainer.group = ml_collections.ConfigDict({"sample_at_checkpoints": True})
    line = trainer.done_line(4, str(run / "checkpoints"))
    assert line == (
        "score model done: checkpoint step 4 in runs/my run/checkpoints, samples in "
        "runs/my run/samples; sample with: python main.py '--workdir=runs/my run' --mode=sample"
    )
    assert shlex.split(line.split("sample with: ")[1])[2] == "--workdir=runs/my run"
    trainer.group.sample_at_checkpoints = False
    assert "samples in" not in trainer.done_line(4, str(run / "checkpoints"))
    stage = object.__new__(AutoencoderTrainer)
    line = stage.done_line(6, "/elsewhere/autoencoder/checkpoints")
    assert line == "autoencoder done: checkpoint step 6 in /elsewhere/autoencoder/checkpoints"


def test_run_summary_records_the_last_logged_loss_and_throughput(tmp_path):
    import jax

    from jaxdiff.training.trainer import run_summary, write_summary

    records = [
        {"step": 2, "loss": 1.5, "grad_norm": 3.0, "images_per_sec": 100.0},
        {"step": 4, "loss": 0.5, "grad_norm": 2.0},  # The last interval, no throughput.
        {"step": 4, "accuracy": 0.9},  # An evaluation record.
    ]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"step": 6, "lo'
    (tmp_path / "metrics.jsonl").write_text(text)
    summary = run_summary(str(tmp_path), "classifier", "configs/x.py", 4, 12.345)
    date = summary.pop("date")
    assert summary == {
        "component": "classifier",
        "config": "configs/x.py",
        "steps": 4,
        "final_loss": 0.5,
        "images_per_sec": 100.0,
        "train_seconds": 12.3,
        "jax": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
    }
    assert date.endswith("+00:00")
    path = write_summary(str(tmp_path), {**summary, "date": date})
    with open(path) as f:
        assert json.load(f) == {**summary, "date": date}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "summary.json"]
