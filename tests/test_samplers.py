"""Every sampler, driven by the analytic score of Gaussian data, must reproduce that data.

For x_0 ~ N(MU, S^2 I) the perturbed marginal is N(alpha MU, (alpha^2 S^2 + std^2) I),
so its score is known exactly: this tests the samplers, not a network.
"""

import jax
import ml_collections
import pytest

from jaxdiff.errors import UserError
from jaxdiff.samplers import create_sampler, num_function_evals
from jaxdiff.sde import VESDE, VPSDE, SubVPSDE

MU, S = 0.5, 0.2
# Tolerances: 3% of the mean, 5% of the std. The VE prior N(0, std(1)^2) ignores
# the data mean, which alone costs MU * S / std(1) ~ 0.01 (see the ODE result).
MEAN_TOL, STD_TOL = 0.015, 0.01

SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE()}
SAMPLERS = {
    "euler_maruyama": dict(sampler="euler_maruyama", num_steps=500),
    "pc_reverse_diffusion": dict(sampler="pc", predictor="reverse_diffusion", num_steps=500),
    "pc_euler_maruyama": dict(sampler="pc", predictor="euler_maruyama", num_steps=500),
    "ode": dict(sampler="ode", num_steps=100),
}


def sampling_config(**overrides):
    config = ml_collections.ConfigDict(
        dict(
            sampler="euler_maruyama",
            num_steps=500,
            eps=1e-3,
            predictor="reverse_diffusion",
            corrector_steps=1,
            snr=0.16,
        )
    )
    config.update(overrides)
    return config


def analytic_score(sde):
    def score_fn(x, t):
        a = sde.mean_coeff(t)[:, None, None, None]
        var = a**2 * S**2 + sde.marginal_std(t)[:, None, None, None] ** 2
        return -(x - a * MU) / var

    return score_fn


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("sampler_name", sorted(SAMPLERS))
def test_sampler_reproduces_gaussian_data(sde_name, sampler_name):
    sde = SDES[sde_name]
    sampler = create_sampler(sampling_config(**SAMPLERS[sampler_name]))
    # 784 dims as in MNIST: the corrector's step size uses per-example norms.
    x = jax.jit(lambda key: sampler(key, analytic_score(sde), sde, (256, 28, 28, 1)))(
        jax.random.key(0)
    )
    assert abs(float(x.mean()) - MU) < MEAN_TOL
    assert abs(float(x.std()) - S) < STD_TOL


def test_probability_flow_ode_is_deterministic_given_the_prior_draw():
    sde = SDES["vp"]
    sampler = create_sampler(sampling_config(sampler="ode", num_steps=20))
    run = jax.jit(lambda key: sampler(key, analytic_score(sde), sde, (4, 2, 2, 1)))
    assert (run(jax.random.key(3)) == run(jax.random.key(3))).all()
    assert not (run(jax.random.key(3)) == run(jax.random.key(4))).all()


def test_function_evaluation_counts():
    assert num_function_evals(sampling_config(num_steps=500)) == 500
    assert (
        num_function_evals(sampling_config(sampler="pc", num_steps=100, corrector_steps=2)) == 300
    )
    assert num_function_evals(sampling_config(sampler="ode", num_steps=50)) == 100


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(sampler="ddim"), r"unknown sampling.sampler 'ddim'.*euler_maruyama"),
        (dict(sampler="pc", predictor="heun"), r"unknown sampling.predictor 'heun'"),
        (dict(num_steps=1), r"num_steps must be >= 2"),
        (dict(eps=0.0), r"eps must be in \(0, 1\)"),
    ],
)
def test_bad_sampler_settings_are_rejected(overrides, message):
    with pytest.raises(UserError, match=message):
        create_sampler(sampling_config(**overrides))
