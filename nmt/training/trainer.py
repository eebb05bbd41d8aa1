"""The training loop: sampled multilingual batches → model → loss → Adam, with validation,
checkpoints, logs and exact resume. Knows nothing of model internals beyond
``forward() -> (logits, aux)``: every ``aux`` entry named ``loss/...`` is added to the loss.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from nmt.config import Config
from data_prep.binarize import check_bin_matches
from nmt.data.loader import ParallelData, TrainLoader, valid_batches
from nmt.curriculum import check_stages, stage_at
from nmt.data.sampling import probs_for_run
from nmt.data.tokenizer import Tokenizer
from nmt.errors import UserError
from nmt.langs import languages_of, parse_direction
from nmt.models.build import build_model, is_adapter_parameter, parameter_report
from nmt.models.transformer import PAD, count_parameters
from nmt.training.aux_stats import AuxMeter, expert_load_table, plot_expert_load, to_record, validation_record
from nmt.training.checkpoint import latest_good_checkpoint, load_checkpoint, manifest_path, save_checkpoint
from nmt.training.finetune import freeze_parameters, lr_scales, take_architecture_from_init
from nmt.training.logging import RunLogger
from nmt.training.loss import label_smoothed_nll, with_target_tag
from nmt.training.precision import choose_precision
from nmt.training.optim import build_optimizer, scheduled_lr
from nmt.training.run_setup import prepare_run_dir, resolve_corpus, resolve_directions
from nmt.training import distributed, preemption
from nmt.training.parallel import all_sum, clip_grad_norm, expert_parameters, sync_gradients, wrap
from nmt.training.sharded import is_sharded, load_sharded, read_extra, save_sharded


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resolved_config: dict[str, Any]):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resolved_config = resolved_config
        t = cfg.trainer
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        if t.device == "cuda" and not torch.cuda.is_available():
            raise UserError("config key trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu or auto")
        self.device = torch.device("cuda" if t.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
        self.env = distributed.detect()
        distributed.init(self.env, self.device.type)
        self.rank, self.world = self.env.rank, self.env.world_size
        self.main = self.rank == 0
        if self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
        if self.world > 1 and t.parallel == "fsdp" and cfg.model.moe.experts and cfg.model.moe.impl == "fairscale":
            raise UserError("config key model.moe.impl=fairscale is a single-process reference backend; with "
                            "trainer.parallel=fsdp use model.moe.impl=native")
        self.sharded = t.checkpoint_format == "dcp" or (t.checkpoint_format == "auto" and self.world > 1)
        if self.world > 1 and t.checkpoint_format == "pt":
            raise UserError(f"config key trainer.checkpoint_format=pt with {self.world} ranks: several ranks write "
                            f"sharded checkpoints; use trainer.checkpoint_format=auto or dcp")
        torch.manual_seed(t.seed)
        take_architecture_from_init(cfg, resolved_config)  # model=from_init: trainer.init_from's architecture

        corpus = resolve_corpus(cfg.data.corpus)
        self.tokenizer = Tokenizer(corpus / "spm.model")
        self.tokenizer.check_tags()
        check_bin_matches(corpus / "bin", self.tokenizer)
        self.directions, self.valid_directions = resolve_directions(corpus, cfg.data.directions, cfg.data.valid_directions)
        adapters = cfg.model.adapters
        if adapters.kind != "none" and not adapters.languages:  # adapter keys: the training languages/pairs
            adapters.languages = sorted({code for d in self.directions for code in d.split("-")})
            adapters.pairs = list(self.directions)
            resolved_config["model"]["adapters"].update(languages=adapters.languages, pairs=adapters.pairs)
        self.resume = self._on_main(lambda: prepare_run_dir(self.run_dir, corpus / "spm.model", self.tokenizer.sha256,
                                                            resolved_config, t.resume))

        max_pos = cfg.model.max_positions
        self.corpus = corpus
        self.train_data = ParallelData.open(corpus, "train", self.directions, max_source_positions=max_pos,
                                            max_target_positions=max_pos, subsample=dict(cfg.data.subsample),
                                            subsample_seed=cfg.data.subsample_seed)
        self.stages = check_stages(cfg.curriculum.stages, self.directions)
        self.stage = 0
        self.probs = self._probs_for(self.stages[0][1] if self.stages else self.directions)
        # Every rank plans the same global batch stream and takes every world-th batch of it.
        self.loader = TrainLoader(
            self.train_data, self.probs, max_tokens=cfg.data.max_tokens,
            max_sentences=cfg.data.max_sentences or None, seed=t.seed,
            one_direction_per_batch=cfg.data.one_direction_per_batch,
            epoch_size=cfg.data.epoch_size or None, rank=self.rank, world_size=self.world)
        self.valid_data = (ParallelData.open(corpus, "valid", self.valid_directions, max_source_positions=max_pos,
                                             max_target_positions=max_pos)
                           if self.valid_directions else None)
        if self.valid_data is not None and sum(self.valid_data.sizes().values()) == 0:
            raise UserError(f"the valid split of {corpus} has no usable segments for {', '.join(self.valid_directions)}; "
                            f"import a valid split or train without validation (data.valid_directions=[none])")
        self.best_by = ["-".join(parse_direction(d, where="trainer.best_by")) for d in t.best_by]
        outside = [d for d in self.best_by if d not in self.valid_directions]
        if outside:
            raise UserError(f"config key trainer.best_by names {', '.join(outside)}, which is not validated "
                            f"(validation directions: {', '.join(self.valid_directions) or 'none'})")

        self.model = self._build_model()
        self.base_languages: list[str] = []  # the init_from model's languages: the run's model knows them too
        if t.init_from:
            self._init_from(Path(t.init_from))
        if adapters.freeze_base:
            for name, p in self.model.named_parameters():
                p.requires_grad_(is_adapter_parameter(name))
        freeze_parameters(self.model, list(t.freeze))
        if self.main:
            print(parameter_report(self.model), flush=True)
        self.wrapped = wrap(self.model, t.parallel, self.device) if self.world > 1 else self.model
        self.expert_ids = {id(p) for p in expert_parameters(self.model).values()}  # for the global gradient norm
        self.optimizer = build_optimizer(self.wrapped, cfg.optim, lr_scales(self.wrapped, t.init_from, t.init_lr_scale))
        if self.rank > 0:  # dropout differs by rank; rank 0 keeps the stream of a single process
            torch.manual_seed(t.seed + 1_000_003 * self.rank)
        self.step = 0
        self.bad_in_a_row = 0  # consecutive updates skipped for a non-finite loss or gradient
        self.skipped_updates = 0
        self.best_valid: float | None = None
        self.best_step: int | None = None
        self.precision, why = choose_precision(t.precision, cfg.model.d_model, cfg.model.ffn_dim, self.device)
        self._say(f"precision: {self.precision} ({why}); {self.world} rank(s)"
                  + (f" ({self.env.source}, trainer.parallel={t.parallel})" if self.world > 1 else ""))
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                         if self.precision == "bf16" else nullcontext())
        if self.resume:
            self._resume()
        # Only once the checkpoint is known to fit: a refused resume leaves the run as it was.
        if self.main:
            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved_config)))
        self.logger = RunLogger(self.run_dir, enabled=self.main)

    def _say(self, message: str) -> None:
        if self.main:
            print(message, flush=True)

    def _on_main(self, fn):  # noqa: ANN001, ANN202
        """Run ``fn`` on rank 0 only; a UserError there stops every rank (with the message on rank 0)."""
        result, error = None, None
        if self.main:
            try:
                result = fn()
            except UserError as e:
                error = e
        failed = distributed.any_rank(error is not None)
        if error is not None:
            raise error
        if failed:
            raise UserError("rank 0 stopped with an error (see its output)")
        if self.world > 1:  # every rank needs the answer (e.g. whether to resume)
            box = [result]
            torch.distributed.broadcast_object_list(box, src=0)
            result = box[0]
        return result

    def _build_model(self) -> torch.nn.Module:
        """The model on this rank. With several ranks and MoE, each rank holds its share of the
        experts; they start from the same weights as a single process would (built whole, sliced)."""
        moe = self.cfg.model.moe.experts > 0
        vocab = self.tokenizer.vocab_size
        if self.world == 1 or not moe:
            return build_model(self.cfg.model, vocab).to(self.device)
        if self.cfg.model.moe.experts % self.world:
            raise UserError(f"config key model.moe.experts={self.cfg.model.moe.experts} does not split over "
                            f"{self.world} ranks (expert parallelism): use a multiple of the world size")
        whole = build_model(self.cfg.model, vocab).state_dict()
        model = build_model(self.cfg.model, vocab, expert_group=torch.distributed.group.WORLD)
        model.load_state_dict(whole)  # Experts keep their own slice
        return model.to(self.device)

    def _init_from(self, path: Path) -> None:
        """Start from another run's weights (e.g. a dense model before adapter fine-tuning):
        every base parameter must be in the checkpoint; adapter parameters may be missing."""
        from nmt.inference import load_inference_checkpoint

        ck = load_inference_checkpoint(path)  # a .pt, a .dcp or an export (e.g. from nmt.vocab add-language)
        theirs, ours = ck.tokenizer, self.tokenizer
        if theirs.sha256 != ours.sha256:
            raise UserError(
                f"trainer.init_from={path} was trained with the vocabulary {theirs.path} ({theirs.vocab_size} "
                f"pieces, sha256 {theirs.sha256[:12]}…) but data.corpus has {ours.path} ({ours.vocab_size} pieces, "
                f"sha256 {ours.sha256[:12]}…): copy {theirs.path} to {ours.path} and re-binarize "
                f"(python -m data_prep.binarize --corpus CORPUS --overwrite)")
        self.base_languages = list(ck.languages or [])
        missing, unexpected = self.model.load_state_dict(ck.state, strict=False)
        missing = [k for k in missing if not is_adapter_parameter(k)]
        if missing or unexpected:
            names = ", ".join((missing + unexpected)[:5])
            raise UserError(f"trainer.init_from={path} does not fit this model ({len(missing)} missing, "
                            f"{len(unexpected)} unexpected parameters: {names}); use a checkpoint of the same "
                            f"base architecture")
        from nmt.interop.absent_rows import adopt  # an import's absent rows stay absent

        adopt(self.model, self.resolved_config["model"], ck.model_config)
        print(f"initialised from {path} (step {ck.info.get('step')})", flush=True)

    # ---------------------------------------------------------------- curriculum
    def _probs_for(self, directions: list[str]) -> dict[str, float]:
        """Sampling probabilities over ``directions`` (a curriculum stage, or all of them)."""
        sp = self.cfg.sampling
        sizes = {d: n for d, n in self.train_data.sizes().items() if d in directions}
        weights = {k: v for k, v in sp.weights.items() if "-".join(parse_direction(k)) in sizes}
        return probs_for_run(self.cfg, sizes, weights, self.train_data, self.world)

    def _enter_stage(self, stage: int) -> None:
        start, directions = self.stages[stage]
        self.stage = stage
        self.probs = self._probs_for(directions)
        self.loader.set_directions(directions, self.probs)
        print(f"curriculum: stage {stage} from step {start}: {len(directions)} directions "
              f"({', '.join(directions)})", flush=True)

    # ---------------------------------------------------------------- checkpoints
    def _extra_state(self) -> dict[str, Any]:
        """Everything but the tensors of the model and optimizer (identical on every rank, except
        the RNG: each rank's is kept)."""
        rng = {"torch": torch.get_rng_state(),
               **({"cuda": torch.cuda.get_rng_state()} if self.device.type == "cuda" else {})}
        per_rank = [rng]
        if self.world > 1:
            per_rank = [None] * self.world
            torch.distributed.all_gather_object(per_rank, rng)
        return {
            "step": self.step,
            "loader": self.loader.state_dict(),
            "rng": per_rank[0],
            "rng_per_rank": per_rank,
            "world_size": self.world,
            "best_valid": self.best_valid,
            "best_step": self.best_step,
            "skipped_updates": self.skipped_updates,
            "config": self.resolved_config,
            "directions": list(self.directions),
            "languages": sorted(set(self.base_languages) | set(languages_of(self.directions))),
            "tokenizer": {"path": str((self.run_dir / "spm.model").resolve()), "sha256": self.tokenizer.sha256},
        }

    def _save(self, names: list[str]) -> None:
        """Write ``names`` (``last``, ``best``, ``step_N``): single files, or sharded directories."""
        extra = self._extra_state()
        ckpt_dir = self.run_dir / "checkpoints"
        if self.sharded:  # collective: every rank writes its shards
            for name in names:
                save_sharded(ckpt_dir / f"{name}.dcp", self.wrapped, self.optimizer, extra)
        elif self.main:
            state = {**extra, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
            for name in names:  # each file written atomically on its own
                save_checkpoint(state, ckpt_dir / f"{name}.pt")
        if self.main:
            self._prune()
        distributed.barrier()

    def _prune(self) -> None:
        suffix = ".dcp" if self.sharded else ".pt"
        steps = sorted(self.run_dir.glob(f"checkpoints/step_*{suffix}"), key=lambda p: int(p.stem.split("_")[1]))
        for old in steps[: -self.cfg.trainer.keep_last]:
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
                manifest_path(old).unlink(missing_ok=True)

    def _read_candidate(self, path: Path) -> dict[str, Any]:
        """A checkpoint's state (its non-tensor part for a sharded one), if this run can resume from it."""
        if is_sharded(path):
            return read_extra(path)
        state = load_checkpoint(path)
        if self.world > 1 and (self.cfg.model.moe.experts or self.cfg.trainer.parallel == "fsdp"):
            raise UserError("a single-file checkpoint resumes on several ranks only with a dense model and "
                            "trainer.parallel=ddp; convert it by resuming it in one process with "
                            "trainer.checkpoint_format=dcp for a step")
        return state

    def _resume(self) -> None:
        ckpt_dir = self.run_dir / "checkpoints"
        chosen, state, problems = latest_good_checkpoint(ckpt_dir, self._read_candidate)
        for problem in problems:
            self._say(f"WARNING: {problem}")
        if chosen is None:
            if problems:
                raise UserError(f"trainer.resume: no checkpoint in {ckpt_dir} is usable; start a new run "
                                f"in another directory (hydra.run.dir=...)")
            self._say(f"trainer.resume=true but {ckpt_dir} holds no checkpoint: starting from scratch")
            return
        if problems:
            self._say(f"WARNING: resuming from the previous good checkpoint {chosen} instead")
        if is_sharded(chosen):
            load_sharded(chosen, self.wrapped, self.optimizer)
        else:
            try:
                self.model.load_state_dict(state["model"])
            except RuntimeError as e:
                raise UserError(f"checkpoint {chosen} does not fit this config's model ({str(e).splitlines()[0][:160]}); "
                                f"resume with the config the run was started with") from None
            self.optimizer.load_state_dict(state["optimizer"])
        if self.stages and stage_at(self.stages, int(state["step"])) != self.stage:
            self._enter_stage(stage_at(self.stages, int(state["step"])))  # the loader state is of that stage
        self.loader.load_state_dict(state["loader"])
        self._restore_rng(state)
        self.step = int(state["step"])
        self.best_valid = state.get("best_valid")
        self.best_step = state.get("best_step")
        self.skipped_updates = int(state.get("skipped_updates", 0))
        self._say(f"resumed from {chosen} at step {self.step}")

    def _restore_rng(self, state: dict[str, Any]) -> None:
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        if len(per_rank) == self.world:
            rng = per_rank[self.rank]
        elif self.rank == 0:
            rng = per_rank[0]
        else:  # another world size: this rank's dropout stream starts afresh (deterministically)
            torch.manual_seed(self.cfg.trainer.seed + 1_000_003 * self.rank + int(state["step"]))
            self._say(f"note: the checkpoint was written by {len(per_rank)} rank(s), this run has {self.world}: "
                      f"ranks > 0 reseed their dropout streams")
            return
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"])

    # ---------------------------------------------------------------- steps
    def _forward(self, batch, n_directions: int) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
        b = batch.to(self.device)
        b = with_target_tag(b) if self.cfg.trainer.loss_include_tag else b
        counted = b.target.ne(PAD)  # the vocabulary projection runs only where the loss counts
        with self.autocast:
            logits, aux = self.wrapped(b.src_tokens, b.prev_output_tokens, b.src_lang, b.tgt_lang, output_mask=counted,
                                       aux_loss_scale=float(counted.sum()))
        direction = b.direction[:, None].expand_as(b.target)[counted]
        out = label_smoothed_nll(logits, b.target[counted], self.cfg.optim.label_smoothing, direction, n_directions)
        return out.loss, out, aux

    def train_step(self) -> dict[str, Any]:
        if self.stages and stage_at(self.stages, self.step) != self.stage:
            self._enter_stage(stage_at(self.stages, self.step))
        self.model.train()
        total_tokens, loss_sum, nll_sum = 0, 0.0, 0.0
        nll_dir = torch.zeros(len(self.directions))
        tok_dir = torch.zeros(len(self.directions))
        aux_meter = AuxMeter()
        objective = 0.0  # the value whose gradient is taken (loss + aux losses), to check it is finite
        n_micro = self.cfg.trainer.update_freq
        for i in range(n_micro):
            batch = next(self.loader)
            with sync_gradients(self.wrapped, i == n_micro - 1):  # one all-reduce per update
                loss, out, aux = self._forward(batch, len(self.directions))
                attached = 0.0  # aux losses whose gradient travels with the layer outputs (FSDP2)
                for key, value in aux.items():
                    if key.startswith("loss/"):
                        if torch.is_tensor(value) and value.requires_grad:
                            loss = loss + value * out.ntokens  # aux losses are per-token means
                        else:
                            attached += float(value) * out.ntokens
                loss.backward()
            aux_meter.add(aux)
            objective += float(loss.detach()) + attached
            total_tokens += out.ntokens
            loss_sum += float(out.loss.detach())
            nll_sum += float(out.nll)
            nll_dir += out.nll_per_direction.cpu()
            tok_dir += out.tokens_per_direction.cpu()
        if self.world > 1:  # totals over all ranks (one small all-reduce)
            totals = all_sum(torch.cat([torch.tensor([total_tokens, objective, loss_sum, nll_sum], dtype=torch.float64),
                                        nll_dir.double(), tok_dir.double()]))
            total_tokens, objective, loss_sum, nll_sum = int(totals[0]), *(float(x) for x in totals[1:4])
            n = len(self.directions)
            nll_dir, tok_dir = totals[4:4 + n].float(), totals[4 + n:].float()
        # Gradients of summed losses, normalised once by all target tokens of the update (DDP/FSDP
        # average over ranks, hence the factor world).
        scale = self.world / max(total_tokens, 1)
        for p in self.wrapped.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
        gnorm = clip_grad_norm(self.wrapped, self.cfg.optim.clip_norm if self.cfg.optim.clip_norm > 0 else float("inf"),
                               self.expert_ids)
        lr = scheduled_lr(self.step + 1, self.cfg.optim, self.cfg.trainer.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # trainer.init_lr_scale
        skipped = not (math.isfinite(objective) and math.isfinite(float(gnorm)))
        if skipped:  # the step counts, the weights and optimizer state do not change
            self._bad_update(objective, float(gnorm))
        else:
            self.optimizer.step()
            self.bad_in_a_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"tokens": total_tokens, "loss_sum": loss_sum, "nll_sum": nll_sum, "nll_dir": nll_dir,
                "tok_dir": tok_dir, "gnorm": float(gnorm), "lr": lr, "aux": aux_meter, "skipped": skipped}

    def _bad_update(self, objective: float, gnorm: float) -> None:
        self.bad_in_a_row += 1
        self.skipped_updates += 1
        limit = self.cfg.trainer.max_bad_updates
        print(f"step {self.step + 1}: non-finite loss {objective} or gradient norm {gnorm}: update skipped "
              f"({self.bad_in_a_row} in a row, {self.skipped_updates} in total)", flush=True)
        if self.bad_in_a_row >= limit:
            raise UserError(
                f"{limit} consecutive updates had a non-finite loss or gradient (trainer.max_bad_updates={limit}), "
                f"the last at step {self.step + 1}; stopping without saving. The last good checkpoint is kept in "
                f"{self.run_dir / 'checkpoints'}; lower optim.lr, set optim.clip_norm, or use trainer.precision=fp32, "
                f"then resume with trainer.resume=true")

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        assert self.valid_data is not None
        record = self.split_loss(self.valid_data, self.valid_directions, "valid",
                                 self.cfg.trainer.valid_max_sentences or None)
        record["valid/ppl"] = math.exp(min(record["valid/loss"], 50.0))
        return record

    @torch.no_grad()
    def split_loss(self, data: ParallelData, directions: list[str], prefix: str,
                   limit: int | None = None) -> dict[str, Any]:
        """Token-level NLL on ``data`` overall and per direction (``<prefix>/loss[/<direction>]``),
        plus MoE statistics by direction when the model reports them."""
        self.model.eval()
        nll = torch.zeros(len(directions))
        tok = torch.zeros(len(directions))
        aux_by_direction: dict[str, AuxMeter] = {}
        for batch in valid_batches(data, self.cfg.data.max_tokens, max_per_direction=limit):
            _, out, aux = self._forward(batch, len(directions))
            nll += out.nll_per_direction.cpu()
            tok += out.tokens_per_direction.cpu()
            if aux:  # every validation batch holds one direction
                name = directions[int(batch.direction[0])]
                aux_by_direction.setdefault(name, AuxMeter()).add(aux)
        record: dict[str, Any] = validation_record(aux_by_direction) if prefix == "valid" else {}
        loads = expert_load_table(aux_by_direction)
        if loads and prefix == "valid":
            plot_expert_load(loads, self.run_dir / "plots" / f"expert_load_step{self.step}.png",
                             f"expert load by layer and language pair, step {self.step}")
        for d, name in enumerate(directions):
            if tok[d] > 0:
                record[f"{prefix}/loss/{name}"] = float(nll[d] / tok[d])
        record[f"{prefix}/loss"] = float(nll.sum() / tok.sum().clamp(min=1))
        return record

    def selection_loss(self, record: dict[str, Any]) -> float:
        """The validation loss that picks best.pt: over ``trainer.best_by`` directions, or all."""
        if not self.best_by:
            return record["valid/loss"]
        return sum(record[f"valid/loss/{d}"] for d in self.best_by) / len(self.best_by)

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        t = self.cfg.trainer
        done = self.run_dir / "summary.json"
        if self.step >= t.max_steps and done.is_file():  # a finished run started again: nothing to do
            self._say(f"{self.run_dir} is complete (step {self.step} of trainer.max_steps={t.max_steps}); "
                      f"raise trainer.max_steps with trainer.resume=true to train on")
            return json.loads(done.read_text())
        n_params = count_parameters(self.model)
        print(f"model: {n_params / 1e6:.2f}M parameters; {len(self.directions)} directions; "
              f"device {self.device}, precision {self.precision}; run dir {self.run_dir}", flush=True)
        desc = f"train (stops after {t.max_time_minutes:g} min)" if t.max_time_minutes > 0 else "train"
        # With a time limit the step count at the end is unknown: no total, so no misleading ETA.
        bar = tqdm(total=None if t.max_time_minutes > 0 else t.max_steps, initial=self.step,
                   disable=not (t.progress and self.main), desc=desc, dynamic_ncols=True)
        acc = self._new_acc()
        last_valid: dict[str, float] = {}
        deadline = time.monotonic() + t.max_time_minutes * 60 if t.max_time_minutes > 0 else float("inf")
        stop_reason = "max_steps"
        preemption.install()  # USR1/USR2 (Slurm/submitit, before the time limit) or TERM: save, then stop
        try:
            while self.step < t.max_steps:
                stats = self.train_step()
                self._accumulate(acc, stats)
                bar.update(1)
                final = self.step == t.max_steps
                # Stop conditions that must hold on every rank at once: one small all-reduce per step.
                out_of_time, signalled = all_sum(torch.tensor(
                    [float(time.monotonic() >= deadline), float(preemption.requested() is not None)])).tolist()
                if out_of_time and not final:
                    final, stop_reason = True, "max_time_minutes"
                    self._say(f"trainer.max_time_minutes={t.max_time_minutes} reached at step {self.step}: stopping")
                if signalled:
                    self._say(f"{preemption.requested() or 'a signal'} received: saving at step {self.step}, then stopping")
                    self._save(["last"])
                    stop_reason = "preempted"
                    break
                if self.step % t.log_interval == 0 or final:
                    record = self._log_record(acc)
                    self.logger.train(record)
                    bar.set_postfix(loss=f"{record['train/nll']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                    acc = self._new_acc()
                is_valid = self.step % t.valid_interval == 0 or final
                if is_valid and self.valid_data is not None:
                    last_valid = self.validate()
                    self.logger.valid({"step": self.step, **last_valid})
                    names = ["last"]
                    selection = self.selection_loss(last_valid)
                    if self.best_valid is None or selection < self.best_valid:
                        self.best_valid, self.best_step = selection, self.step
                        names.append("best")
                    if t.save_interval and self.step % t.save_interval == 0:
                        names.append(f"step_{self.step}")
                    self._save(names)
                    if self.main:
                        bar.write(f"step {self.step}: valid loss {last_valid['valid/loss']:.3f} "
                                  f"(best {self.best_valid:.3f})")
                elif t.save_interval and self.step % t.save_interval == 0:
                    self._save(["last", f"step_{self.step}"])
                if final:
                    break
            if self.valid_data is None and stop_reason != "preempted":  # no validation: best is the latest
                self._save(["last", "best"])
        finally:
            bar.close()
            self.logger.close()
        if stop_reason == "preempted":
            # Exit instead of returning: under submitit a return would record the job as finished
            # while Slurm runs it again. No summary.json: the run is not complete.
            if self.main and preemption.requeue_self():
                print("requeued this Slurm job: it resumes from checkpoints/last when it restarts", flush=True)
            distributed.barrier()
            distributed.shutdown()
            raise SystemExit(0)
        preemption.uninstall()
        summary = {"step": self.step, "stopped_by": stop_reason, "best_valid_loss": self.best_valid,
                   "best_step": self.best_step, "world_size": self.world,
                   "parameters": n_params, "precision": self.precision, **last_valid}
        if self.main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _new_acc(self) -> dict[str, Any]:
        return {"t0": time.perf_counter(), "steps": 0, "tokens": 0, "loss": 0.0, "nll": 0.0,
                "nll_dir": torch.zeros(len(self.directions)), "tok_dir": torch.zeros(len(self.directions)),
                "gnorm": 0.0, "aux": AuxMeter(), "skipped": 0}

    def _accumulate(self, acc: dict[str, Any], s: dict[str, Any]) -> None:
        acc["lr"] = s["lr"]
        if s["skipped"]:  # its loss is not finite: only counted
            acc["skipped"] += 1
            return
        acc["steps"] += 1
        acc["tokens"] += s["tokens"]
        acc["loss"] += s["loss_sum"]
        acc["nll"] += s["nll_sum"]
        acc["nll_dir"] += s["nll_dir"]
        acc["tok_dir"] += s["tok_dir"]
        acc["gnorm"] += s["gnorm"]
        acc["lr"] = s["lr"]
        acc["aux"].merge(s["aux"])

    def _log_record(self, acc: dict[str, Any]) -> dict[str, Any]:
        elapsed = max(time.perf_counter() - acc["t0"], 1e-9)
        tokens = max(acc["tokens"], 1)
        record: dict[str, Any] = {
            "step": self.step,
            "train/loss": acc["loss"] / tokens,
            "train/nll": acc["nll"] / tokens,
            "train/ppl": math.exp(min(acc["nll"] / tokens, 50.0)),
            "lr": acc["lr"],
            "gnorm": acc["gnorm"] / max(acc["steps"], 1),
            "skipped_updates": acc["skipped"],
            "tokens_per_s": acc["tokens"] / elapsed,
        }
        for d, name in enumerate(self.directions):
            if acc["tok_dir"][d] > 0:
                record[f"train/loss/{name}"] = float(acc["nll_dir"][d] / acc["tok_dir"][d])
        if self.stages:
            record["curriculum/stage"] = self.stage
            record["curriculum/active_directions"] = len(self.stages[self.stage][1])
        realised = self.loader.realised()
        for name in self.directions:
            record[f"sampling/target/{name}"] = self.probs.get(name, 0.0)
            record[f"sampling/realised/{name}"] = realised.get(name, 0.0)
        record.update(to_record(acc["aux"].means()))
        return record
