"""Inference: variational families (guides), optimisers and the SVI engine."""
