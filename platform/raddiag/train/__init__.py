"""Training: plain train/eval steps, the Ray Train worker loop and the TorchTrainer factory."""
