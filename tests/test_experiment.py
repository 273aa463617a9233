"""Config validation and automatic values; configs of runs written by earlier versions."""

import jax
import pytest
from jaxdiff.configs import mnist

from jaxdiff import experiment as experiment_module
from jaxdiff.core.errors import UserError
from jaxdiff.experiment import create_experiment
from jaxdiff.models.unet import SmallUNet
from jaxdiff.training.workdir import (
    check_config,
    check_model_config,
    config_changes,
    read_config,
    write_config,
)


def experiment_with(**training):
    config = mnist.get_config()
    config.training.update(training)
    return create_experiment(config)


@pytest.mark.parametrize(
    "intervals, expected",
    [((2000, 100, 500), 4), ((6, 2, 2), 2), ((9, 3, 3), 3), ((10, 5, 5), 1)],
)
def test_automatic_steps_per_call_divides_every_interval(intervals, expected, monkeypatch):
    # The CPU's preferred 4 steps per call, on whatever backend runs the tests.
    monkeypatch.setattr(experiment_module, "_AUTO_STEPS_PER_CALL", {jax.default_backend(): 4})
    num_steps, log_every, checkpoint_every = intervals
    experiment = experiment_with(
        steps_per_call=0,
        num_steps=num_steps,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
    )
    assert experiment.config.training.steps_per_call == expected


def test_explicit_steps_per_call_is_kept_and_the_callers_config_untouched(monkeypatch):
    monkeypatch.setattr(experiment_module, "_AUTO_STEPS_PER_CALL", {jax.default_backend(): 4})
    config = mnist.get_config()
    experiment = create_experiment(config)
    assert config.training.steps_per_call == 0  # resolved in a copy only
    assert experiment.config.training.steps_per_call == 4
    assert experiment_with(steps_per_call=2).config.training.steps_per_call == 2


@pytest.mark.parametrize(
    "training, message",
    [
        (dict(steps_per_call=3), r"num_steps=4000 must be a multiple of training.steps_per_call=3"),
        (dict(steps_per_call=-1), r"steps_per_call must be >= 0"),
        (dict(batch_size=0), r"batch_size must be positive"),
        (dict(ema_decay=1.0), r"ema_decay must be in \[0, 1\)"),
    ],
)
def test_impossible_training_settings(training, message):
    with pytest.raises(UserError, match=message):
        experiment_with(**training)


def test_a_run_stored_under_a_former_network_name_loads_and_resumes_with_the_new_config(
    tmp_path,
):
    """Runs written before the small U-Nets' rename store model.name 'seed_unet'."""
    workdir = str(tmp_path)
    old = mnist.get_config()
    old.model.name = "seed_unet"
    write_config(old, workdir)
    stored = read_config(workdir)
    assert stored.model.name == "seed_unet"  # The run's config as it was written...
    assert isinstance(create_experiment(stored).model, SmallUNet)  # ...builds the same net.
    # The config file now says small_unet: the same model, so resuming needs no flag.
    config = mnist.get_config()
    assert config.model.name == "small_unet"
    assert config_changes(config, workdir) == []
    check_config(config, workdir, allow_change=False)
    check_model_config(config, workdir)
    config.model.name = "small_unet_resize"  # Another net: refused, under the new names.
    with pytest.raises(
        UserError,
        match=r"\(model.name 'small_unet' there, 'small_unet_resize' here\); "
        r"add --config.model.name=small_unet$",
    ):
        check_model_config(config, workdir)
