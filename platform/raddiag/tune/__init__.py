"""Hyper-parameter sweeps: Ray Tune + Optuna + ASHA over TorchTrainer trials."""
