"""razor: one job description for distributed PyTorch training, run locally, on Kubernetes or SLURM.

This package stays light to import: ``razor.node`` runs inside every training node and must not
pull in the spec's dependencies.
"""

__version__ = "0.1.0"
