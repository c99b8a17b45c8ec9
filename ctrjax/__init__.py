"""ctrjax: CTR prediction research framework on JAX/Flax."""
