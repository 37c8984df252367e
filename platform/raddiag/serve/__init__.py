"""Packaging trained models for MLflow serving."""
