"""Vocabulary rows a model's origin lacked (``model.absent_ids``).

An NLLB-200 import has 256 tag slots but Transformers' checkpoint only 202 codes: the other slots'
rows exist in nmt's embedding (mean of the code rows, a start for fine-tuning) but not in the
original, so ``Transformer.decode`` gives them -inf logits and every softmax (beam search,
scoring, the training loss) runs over the original's rows only, as Transformers' does.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

from nmt.interop.vocab_layout import Layout


def absent_ids(layout: Layout) -> list[int]:
    """Sorted internal ids that have no row on the fairseq side (``Layout.fairseq_id`` -1)."""
    return [i for i, f in enumerate(layout.fairseq_id) if f < 0]


def mark_present(model_cfg: MutableMapping[str, Any], ids: Iterable[int]) -> list[int]:
    """Make ``ids`` (e.g. a tag slot ``nmt.vocab add-language`` gives a language) ordinary rows
    again in a saved model config dict (checkpoint or export ``model``); returns the new list.
    A model built from the config afterwards predicts them; a built one needs ``set_absent``."""
    drop = set(ids)
    model_cfg["absent_ids"] = [i for i in model_cfg.get("absent_ids", []) if i not in drop]
    return model_cfg["absent_ids"]


def adopt(model: Any, model_cfg: MutableMapping[str, Any], source_cfg: MutableMapping[str, Any]) -> list[int]:
    """``trainer.init_from``: a model initialised from ``source_cfg``'s weights predicts what that
    model predicts. Its absent ids (if any, and none configured already) go to ``model`` and to
    ``model_cfg`` (the run's config dict, saved with every checkpoint); returns them."""
    ids = list(source_cfg.get("absent_ids") or [])
    if ids and not model_cfg.get("absent_ids"):
        model.set_absent(ids)
        model_cfg["absent_ids"] = ids
    return ids
