"""Interoperability with PyTorch: the same models in torch, and weight conversion both ways."""
