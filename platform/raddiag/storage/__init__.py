"""Dataset storage: the Zarr/Parquet store, synthetic data and splits."""
