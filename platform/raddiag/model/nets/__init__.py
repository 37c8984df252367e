"""Assembled networks."""

from raddiag.model.nets.raddiag import RadDiagNet, build_model, load_pretrained

__all__ = ["RadDiagNet", "build_model", "load_pretrained"]
