"""Config validation and automatic values."""

import jax
import pytest
from jaxdiff.configs import mnist

from jaxdiff import experiment as experiment_module
from jaxdiff.core.errors import UserError
from jaxdiff.experiment import create_experiment


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
