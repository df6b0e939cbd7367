"""rlhf-lab: a reproducible research workbench for RLHF."""

__version__ = "0.1.0"
