"""Dataset storage: the Zarr/Parquet store, readers, de-identification, ingest, verify, synthetic data and splits."""
