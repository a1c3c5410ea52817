"""plastic: pure-functional JAX RL agents with composable plasticity interventions."""
__version__ = "0.1.0"
