"""Interoperability with Transformers formats (NLLB-200, M2M-100): docs/interop.md."""
