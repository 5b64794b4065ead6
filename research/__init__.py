"""research: one trainer for MLPs, decoder LMs and encoder classifiers in JAX/Flax."""
