"""Training: fit() (fit), one step (step), the schedules, the NaN guard, signals, options resolved from the data
(resolve) and the torchrun launcher (launch)."""
