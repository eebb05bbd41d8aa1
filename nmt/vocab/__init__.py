"""Vocabulary and languages of a trained model: ``python -m nmt.vocab add-language ...``."""
