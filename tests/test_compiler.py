"""jaxdiff.core.compiler: the XLA options every jaxdiff program is compiled with."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.core import compiler

OPTION = "xla_cpu_experimental_ynn_fusion_type"


def _conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _sum_over_batch_and_space(x):
    return jnp.sum(x, axis=(0, 1, 2))


def _inputs():
    keys = jax.random.split(jax.random.key(0))
    return jax.random.normal(keys[0], (4, 16, 16, 8)), jax.random.normal(keys[1], (3, 3, 8, 32))


def _has_ynnpack_fusion(compiled) -> bool:
    return "__ynn_fusion" in compiled.as_text()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU compiler option")
def test_convolutions_leave_ynnpack_and_reductions_stay_with_the_same_values():
    if compiler.compiler_options() != compiler._CPU_OPTIONS:
        pytest.skip("this XLA has no YNNPACK fusion option, or XLA_FLAGS sets it")
    x, kernel = _inputs()
    default_conv = jax.jit(_conv).lower(x, kernel).compile()
    if not _has_ynnpack_fusion(default_conv):
        pytest.skip("this XLA puts no convolution into a YNNPACK fusion")
    ours_conv = compiler.jit(_conv).lower(x, kernel).compile()
    assert not _has_ynnpack_fusion(ours_conv)
    np.testing.assert_allclose(ours_conv(x, kernel), default_conv(x, kernel), rtol=1e-5, atol=1e-5)

    default_sum = jax.jit(_sum_over_batch_and_space).lower(x).compile()
    ours_sum = compiler.jit(_sum_over_batch_and_space).lower(x).compile()
    assert _has_ynnpack_fusion(ours_sum) == _has_ynnpack_fusion(default_sum)
    np.testing.assert_allclose(ours_sum(x), default_sum(x), rtol=1e-5, atol=1e-5)


def test_an_option_set_in_xla_flags_is_left_to_it(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{OPTION}=individual_dot")
    compiler.compiler_options.cache_clear()
    try:
        assert compiler.compiler_options() == {}
    finally:
        monkeypatch.undo()
        compiler.compiler_options.cache_clear()
    expected = compiler._CPU_OPTIONS if jax.default_backend() == "cpu" else {}
    # Without the flag the option is back (where this XLA knows it).
    assert compiler.compiler_options() in (expected, {})


def test_the_train_call_is_compiled_with_the_options(monkeypatch):
    options = compiler.compiler_options()  # Before the spy: finding them compiles a probe.
    seen = []
    real_jit = jax.jit

    def spy(fun, **kwargs):
        seen.append((fun.__name__, kwargs.get("compiler_options")))
        return real_jit(fun, **kwargs)

    monkeypatch.setattr(compiler.jax, "jit", spy)
    from jaxdiff.core.parallel import create_mesh
    from jaxdiff.training.loop import compile_train_call

    compile_train_call(lambda state, key, dataset: (state, {}), 1, create_mesh())
    assert [o for name, o in seen if name == "call"] == [options]
