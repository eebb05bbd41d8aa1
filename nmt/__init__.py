"""nmt: massively multilingual neural machine translation (NLLB-style), CPU laptop to Slurm cluster."""

__version__ = "0.1.0"
