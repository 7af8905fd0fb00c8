"""Every unlearning method in one registry, one signature: `fn(model, ctx, config) -> model`."""

from uib.methods import baselines, uib  # noqa: F401  (registers the methods)
from uib.methods.base import REGISTRY, MethodConfig, UnlearnContext, available, get

__all__ = ["REGISTRY", "MethodConfig", "UnlearnContext", "available", "get"]
