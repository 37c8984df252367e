"""RadDiag platform: Ray-based training, tuning and serving of a generalist radiology diagnosis model."""

__version__ = "0.1.0"
