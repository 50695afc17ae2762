"""Labeling platform port: the Labelbox model run the chain reads from and writes back to."""
