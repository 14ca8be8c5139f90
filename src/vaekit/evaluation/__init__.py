"""Evaluation: the ELBO and the importance-sampled log-likelihood of a run (evaluate)."""
