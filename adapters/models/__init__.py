"""Model adapters: how a bundle's model is loaded and called."""

from modelhall.adapters.models.base import ModelAdapter, ModelError, open_adapter

__all__ = ["ModelAdapter", "ModelError", "open_adapter"]
