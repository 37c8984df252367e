"""From the store to fixed-shape batches: case assembly, long-tail sampling, Ray Data streaming."""
