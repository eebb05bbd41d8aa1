"""One timed translation run of one system, in its own process (``bench.translate_speed`` starts it).

    python -m bench.translate_systems SPEC_JSON

SPEC: ``system`` (ours_fp32 | ours_bf16 | transformers | ct2_float32 | ct2_int8), ``path`` (the
checkpoint, Transformers directory or ct2 directory), ``lines`` (a file), ``src``, ``tgt``,
``beam``, ``batch_size``, ``threads``, ``max_len_a``, ``max_len_b``, ``spm`` (the model's
SentencePiece model, to count output tokens alike for every system). Prints one JSON line:
``seconds``, ``sentences_per_s``, ``output_tokens``, ``tokens_per_s``, ``load_s``,
``rss_before_load_gib`` and ``peak_rss_gib`` (this process's VmHWM: the runtime, the model and
the search together), and ``outputs`` (the first few translations). With ``hyp_out`` (a path) it
also writes every translation there, one per line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

WARMUP_LINES = 4


def _status_gib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2 ** 20  # kB
    return float("nan")


def _ours(spec: dict, bf16: bool) -> Callable[[list[str]], list[str]]:
    import torch

    from nmt.inference import Translator

    tr = Translator.from_checkpoint(spec["path"])

    def run(lines: list[str]) -> list[str]:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with ctx:
            return tr.translate(lines, spec["src"], spec["tgt"], beam_size=spec["beam"], len_penalty=1.0,
                                batch_size=spec["batch_size"], max_len_a=spec["max_len_a"], max_len_b=spec["max_len_b"])
    return run


def _ct2(spec: dict) -> Callable[[list[str]], list[str]]:
    from nmt.interop.ct2_translate import Ct2Translator

    tr = Ct2Translator(spec["path"], threads=spec["threads"])
    return lambda lines: tr.translate(lines, spec["src"], spec["tgt"], beam_size=spec["beam"], len_penalty=1.0,
                                      batch_size=spec["batch_size"], max_len_a=spec["max_len_a"],
                                      max_len_b=spec["max_len_b"])


def _transformers(spec: dict) -> Callable[[list[str]], list[str]]:
    """``generate`` (beam, forced target code) on the same source tokens as ours; one length limit
    per batch (the batch's largest, as ``generate`` takes one)."""
    import torch
    from transformers import AutoTokenizer, M2M100ForConditionalGeneration

    from nmt.data.tokenizer import Tokenizer
    from nmt.interop.ct2_translate import max_target_len

    hf = Path(spec["path"])
    tok = AutoTokenizer.from_pretrained(str(hf))
    model = M2M100ForConditionalGeneration.from_pretrained(str(hf)).eval()
    pieces = Tokenizer(hf / "sentencepiece.bpe.model")
    src_id, tgt_id = tok.convert_tokens_to_ids([spec["src"], spec["tgt"]])  # type: ignore[misc]  # HF: int | list[int]
    limit = model.config.max_position_embeddings

    def run(lines: list[str]) -> list[str]:
        enc = [[src_id, *tok.convert_tokens_to_ids([pieces.id_to_piece(i) for i in ids][: limit - 2]),  # type: ignore[misc]
                tok.eos_token_id] for ids in pieces.encode_batch(lines)]
        order = sorted(range(len(lines)), key=lambda i: len(enc[i]))
        out = [""] * len(lines)
        for start in range(0, len(order), spec["batch_size"]):
            chunk = order[start: start + spec["batch_size"]]
            width = max(len(enc[i]) for i in chunk)
            ids = torch.full((len(chunk), width), tok.pad_token_id)
            for r, i in enumerate(chunk):
                ids[r, : len(enc[i])] = torch.tensor(enc[i])
            new = max(max_target_len(len(enc[i]), spec["max_len_a"], spec["max_len_b"], limit) for i in chunk)
            with torch.no_grad():
                gen = model.generate(ids, attention_mask=ids.ne(tok.pad_token_id), num_beams=spec["beam"],
                                     forced_bos_token_id=tgt_id, max_new_tokens=new, length_penalty=1.0)
            for r, i in enumerate(chunk):
                out[i] = tok.decode(gen[r], skip_special_tokens=True).strip()  # type: ignore[union-attr]
        return out
    return run


LOADERS: dict[str, Callable[[dict], Callable[[list[str]], list[str]]]] = {
    "ours_fp32": lambda s: _ours(s, bf16=False),
    "ours_bf16": lambda s: _ours(s, bf16=True),
    "transformers": _transformers,
    "ct2_float32": _ct2,
    "ct2_int8": _ct2,
}


def measure(spec: dict) -> dict:
    import torch

    from nmt.data.tokenizer import Tokenizer

    torch.set_num_threads(spec["threads"])
    lines = Path(spec["lines"]).read_text(encoding="utf-8").splitlines()
    rss0 = _status_gib("VmRSS")
    t0 = time.perf_counter()
    run = LOADERS[spec["system"]](spec)
    load_s = time.perf_counter() - t0
    run(lines[:WARMUP_LINES])  # first-call allocations and kernel selection, untimed
    t0 = time.perf_counter()
    outputs = run(lines)
    seconds = time.perf_counter() - t0
    tokens = sum(len(ids) for ids in Tokenizer(spec["spm"]).encode_batch(outputs))
    if spec.get("hyp_out"):  # every translation, for scoring by the caller
        Path(spec["hyp_out"]).write_text("".join(o.replace("\n", " ") + "\n" for o in outputs), encoding="utf-8")
    return {"system": spec["system"], "sentences": len(lines), "seconds": seconds,
            "sentences_per_s": len(lines) / seconds, "output_tokens": tokens, "tokens_per_s": tokens / seconds,
            "load_s": load_s, "rss_before_load_gib": rss0, "peak_rss_gib": _status_gib("VmHWM"),
            "threads": torch.get_num_threads(), "outputs": outputs[:3]}


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))), flush=True)
