"""``python -m nmt.params [+recipe=NAME] [overrides]`` — parameter counts without training.

Composes the same config as ``nmt.train`` and builds the model on the CPU: base, language
adapters and hyper-network parameters, and what a frozen base leaves trainable — the numbers for
setting up adapter vs hyper-adapter comparisons at matched sizes. Adapter keys come from
``model.adapters.languages``/``pairs`` or, when empty, from the corpus' training directions
(``data.corpus``); the vocabulary size from the corpus' ``spm.model`` (or ``vocab=N``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nmt.config import Config, register
from nmt.config_checks import validate
from nmt.errors import UserError, exit_on_user_error

CONF = Path(__file__).resolve().parent.parent / "conf"


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    args = list(sys.argv[1:] if argv is None else argv)
    vocab = next((int(a.split("=", 1)[1]) for a in args if a.startswith("vocab=")), 0)
    overrides = [a for a in args if not a.startswith("vocab=")]
    register()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = OmegaConf.to_object(compose("config", overrides=overrides))
    except OmegaConfBaseException as e:
        raise UserError(f"bad config: {str(e).splitlines()[0]}") from None
    except Exception as e:  # hydra's override parser errors
        raise UserError(f"bad override: {str(e).splitlines()[0]}") from None
    assert isinstance(cfg, Config)  # the registered schema makes to_object build a Config
    validate(cfg)
    a = cfg.model.adapters
    if (a.kind != "none" and not a.languages) or not vocab:
        from nmt.data.tokenizer import Tokenizer
        from nmt.training.run_setup import resolve_corpus, resolve_directions

        corpus = resolve_corpus(cfg.data.corpus)
        if not vocab:
            vocab = Tokenizer(corpus / "spm.model").vocab_size
        if a.kind != "none" and not a.languages:
            directions, _ = resolve_directions(corpus, cfg.data.directions, cfg.data.valid_directions)
            a.languages = sorted({c for d in directions for c in d.split("-")})
            a.pairs = list(directions)
    from nmt.models.build import build_model, is_adapter_parameter, parameter_counts

    model = build_model(cfg.model, vocab)
    if a.freeze_base:
        for name, p in model.named_parameters():
            p.requires_grad_(is_adapter_parameter(name))
    counts = {**parameter_counts(model), "vocab": vocab, "adapter_kind": a.kind,
              "languages": len(a.languages), "pairs": len(a.pairs)}
    print("| part | parameters |\n|---|---|")
    for key in ("base", "adapters", "hypernet", "total", "trainable"):
        print(f"| {key} | {counts[key]:,} |")
    print(json.dumps(counts))
    return counts


if __name__ == "__main__":
    main()
