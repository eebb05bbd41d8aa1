"""The training loop: sampled multilingual batches → model → loss → Adam, with validation,
checkpoints, logs and exact resume. Knows nothing of model internals beyond
``forward() -> (logits, aux)``: every ``aux`` entry named ``loss/...`` is added to the loss.

The Trainer builds one component per concern and :meth:`Trainer.fit` only coordinates them:
:class:`TrainData` (sampler, curriculum, validation split), :class:`TrainState` (counters),
:class:`StepStats` (statistics and the log record), :class:`Validator` (validation, best.pt),
:class:`CheckpointManager` (save, prune, resume, RNG), :class:`StopPolicy` (why to stop) and
:class:`Progress` (bar or log lines). See docs/architecture.md, "Map of nmt/training/".
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from nmt.config import Config
from nmt.data.bin_meta import check_bin_matches
from nmt.data.loader import valid_batches
from nmt.data.tokenizer import Tokenizer
from nmt.device import resolve_device
from nmt.errors import UserError
from nmt.langs import languages_of
from nmt.malloc import keep_freed_memory
from nmt.models.build import build_model, is_adapter_parameter, parameter_report
from nmt.models.transformer import PAD, count_parameters
from nmt.training import distributed, preemption
from nmt.training.checkpoint_manager import CheckpointManager
from nmt.training.finetune import freeze_parameters, lr_scales, take_architecture_from_init
from nmt.training.loss import label_smoothed_nll, with_target_tag
from nmt.training.metrics_log import RunLogger
from nmt.training.optim import build_optimizer, scheduled_lr
from nmt.training.parallel import (
    all_sum,
    clip_grad_norm,
    expert_parameters,
    scale_gradients,
    sync_gradients,
    wrap,
)
from nmt.training.precision import choose_precision
from nmt.training.progress import Progress
from nmt.training.run_setup import prepare_run_dir, resolve_corpus, resolve_directions
from nmt.training.step_stats import StepStats
from nmt.training.stop import StopPolicy, StopReason
from nmt.training.train_data import TrainData
from nmt.training.train_state import ExtraState, TrainState
from nmt.training.validator import Validator, check_best_by

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resolved_config: dict[str, Any]):
        self.cfg, self.run_dir, self.resolved_config = cfg, Path(run_dir), resolved_config
        self.device = self._setup_process()
        take_architecture_from_init(cfg, resolved_config)  # model=from_init: trainer.init_from's architecture
        self.corpus, self.tokenizer, self.directions, self.valid_directions = self._open_corpus()
        self.resume = distributed.on_rank0(self._prepare_run_dir)
        self.data = TrainData(cfg, self.corpus, self.directions, self.valid_directions, self.rank, self.world)
        self.best_by = check_best_by(cfg.trainer.best_by, self.valid_directions)
        self.state = TrainState()
        self.model = self._prepare_model()
        self.wrapped = wrap(self.model, cfg.trainer.parallel, self.device) if self.world > 1 else self.model
        self.expert_ids = {id(p) for p in expert_parameters(self.model).values()}  # for the global gradient norm
        self.optimizer = build_optimizer(self.wrapped, cfg.optim,
                                         lr_scales(self.wrapped, cfg.trainer.init_from, cfg.trainer.init_lr_scale))
        self._seed_rank()
        self.precision, self.autocast = self._choose_precision()
        self.validator = self._make_validator()
        self.checkpoints = self._make_checkpoint_manager()
        self.stop = StopPolicy(cfg.trainer.max_steps, cfg.trainer.max_time_minutes, cfg.trainer.max_bad_updates,
                               all_sum, preemption.requested)
        if self.resume:
            self._resume()
        self._write_config()  # only once the checkpoint is known to fit: a refused resume leaves the run as it was
        self.logger = RunLogger(self.run_dir, enabled=self.main)

    # ---------------------------------------------------------------- set-up
    def _setup_process(self) -> torch.device:
        """Threads, device, process group, the seed; refuses rank-dependent config mistakes."""
        t = self.cfg.trainer
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        device = resolve_device(t.device, key="trainer.device")
        if t.reuse_memory and device.type == "cpu":
            log.info(keep_freed_memory())
        self.env = distributed.detect()
        distributed.init(self.env, device.type)
        self.rank, self.world = self.env.rank, self.env.world_size
        self.main = self.rank == 0
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        moe = self.cfg.model.moe
        if self.world > 1 and t.parallel == "fsdp" and moe.experts and moe.impl == "fairscale":
            raise UserError("config key model.moe.impl=fairscale is a single-process reference backend; with "
                            "trainer.parallel=fsdp use model.moe.impl=native")
        self.sharded = t.checkpoint_format == "dcp" or (t.checkpoint_format == "auto" and self.world > 1)
        if self.world > 1 and t.checkpoint_format == "pt":
            raise UserError(f"config key trainer.checkpoint_format=pt with {self.world} ranks: several ranks write "
                            f"sharded checkpoints; use trainer.checkpoint_format=auto or dcp")
        torch.manual_seed(t.seed)
        return device

    def _open_corpus(self) -> tuple[Path, Tokenizer, list[str], list[str]]:
        """The prepared corpus, its vocabulary, the training and validation directions."""
        corpus = resolve_corpus(self.cfg.data.corpus)
        tokenizer = Tokenizer(corpus / "spm.model")
        tokenizer.check_tags()
        check_bin_matches(corpus / "bin", tokenizer)
        directions, valid_directions = resolve_directions(corpus, self.cfg.data.directions,
                                                          self.cfg.data.valid_directions)
        adapters = self.cfg.model.adapters
        if adapters.kind != "none" and not adapters.languages:  # adapter keys: the training languages/pairs
            adapters.languages = sorted({code for d in directions for code in d.split("-")})
            adapters.pairs = list(directions)
            self.resolved_config["model"]["adapters"].update(languages=adapters.languages, pairs=adapters.pairs)
        return corpus, tokenizer, directions, valid_directions

    def _prepare_run_dir(self) -> bool:
        return prepare_run_dir(self.run_dir, self.corpus / "spm.model", self.tokenizer.sha256,
                               self.resolved_config, self.cfg.trainer.resume)

    def _prepare_model(self) -> torch.nn.Module:
        """The model on this rank: built, started from ``trainer.init_from``, base frozen if asked."""
        model = self._build_model()
        self.base_languages: list[str] = []  # the init_from model's languages: the run's model knows them too
        if self.cfg.trainer.init_from:
            self._init_from(model, Path(self.cfg.trainer.init_from))
        if self.cfg.model.adapters.freeze_base:
            for name, p in model.named_parameters():
                p.requires_grad_(is_adapter_parameter(name))
        freeze_parameters(model, list(self.cfg.trainer.freeze))
        log.info(parameter_report(model))
        return model

    def _build_model(self) -> torch.nn.Module:
        """With several ranks and MoE, each rank holds its share of the experts; they start from
        the same weights as a single process would (built whole, sliced)."""
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

    def _init_from(self, model: torch.nn.Module, path: Path) -> None:
        """Start from another run's weights (e.g. a dense model before adapter fine-tuning, or an
        export from nmt.vocab add-language): same vocabulary; every base parameter must be in the
        checkpoint; adapter parameters may be missing."""
        from nmt.inference import load_inference_checkpoint

        ck = load_inference_checkpoint(path)  # a .pt, a .dcp or an export
        theirs, ours = ck.tokenizer, self.tokenizer
        if theirs.sha256 != ours.sha256:
            raise UserError(
                f"trainer.init_from={path} was trained with the vocabulary {theirs.path} ({theirs.vocab_size} "
                f"pieces, sha256 {theirs.sha256[:12]}…) but data.corpus has {ours.path} ({ours.vocab_size} pieces, "
                f"sha256 {ours.sha256[:12]}…): copy {theirs.path} to {ours.path} and re-binarize "
                f"(python -m data_prep.binarize --corpus CORPUS --overwrite)")
        self.base_languages = list(ck.languages or [])
        missing, unexpected = model.load_state_dict(ck.state, strict=False)
        missing = [k for k in missing if not is_adapter_parameter(k)]
        if missing or unexpected:
            names = ", ".join((missing + unexpected)[:5])
            raise UserError(f"trainer.init_from={path} does not fit this model ({len(missing)} missing, "
                            f"{len(unexpected)} unexpected parameters: {names}); use a checkpoint of the same "
                            f"base architecture")
        from nmt.interop.absent_rows import adopt  # an import's absent rows stay absent

        adopt(model, self.resolved_config["model"], ck.model_config)
        log.info(f"initialised from {path} (step {ck.info.get('step')})")

    def _seed_rank(self) -> None:
        if self.rank > 0:  # dropout differs by rank; rank 0 keeps the stream of a single process
            torch.manual_seed(self.cfg.trainer.seed + 1_000_003 * self.rank)

    def _choose_precision(self) -> tuple[str, Any]:
        t = self.cfg.trainer
        precision, why = choose_precision(t.precision, self.device, self.run_dir, self.resume, self.wrapped,
                                          self.optimizer, self.data.loader, self.cfg.optim.label_smoothing)
        log.info(f"precision: {precision} ({why}); {self.world} rank(s)"
                 + (f" ({self.env.source}, trainer.parallel={t.parallel})" if self.world > 1 else ""))
        return precision, (torch.autocast(self.device.type, dtype=torch.bfloat16) if precision == "bf16"
                           else nullcontext())

    def _make_validator(self) -> Validator:
        max_tokens = self.cfg.data.max_tokens
        return Validator(self.data.valid, self.valid_directions, self.best_by, self.cfg.trainer.valid_interval,
                         self.cfg.trainer.valid_max_sentences or None,
                         lambda data, max_per_direction: valid_batches(data, max_tokens,
                                                                       max_per_direction=max_per_direction),
                         self._forward, self.model, self.run_dir / "plots")

    def _make_checkpoint_manager(self) -> CheckpointManager:
        t, moe = self.cfg.trainer, self.cfg.model.moe.experts > 0
        return CheckpointManager(self.run_dir / "checkpoints", sharded=self.sharded, keep_last=t.keep_last,
                                 model=self.model, wrapped=self.wrapped, optimizer=self.optimizer, rank=self.rank,
                                 world=self.world, device_type=self.device.type,
                                 single_file_resumable=self.world == 1 or not (moe or t.parallel == "fsdp"))

    def _write_config(self) -> None:
        if self.main:
            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(self.resolved_config)))

    # ---------------------------------------------------------------- checkpoints
    def _extra_state(self) -> ExtraState:
        return ExtraState(train=self.state, loader=self.data.loader.state_dict(),
                          rng_per_rank=self.checkpoints.gather_rng(), config=self.resolved_config,
                          directions=list(self.directions),
                          languages=sorted(set(self.base_languages) | set(languages_of(self.directions))),
                          tokenizer={"path": str((self.run_dir / "spm.model").resolve()),
                                     "sha256": self.tokenizer.sha256})

    def _save(self, names: list[str]) -> None:
        self.checkpoints.save(names, self._extra_state())

    def _resume(self) -> None:
        extra = self.checkpoints.load_latest()
        if extra is None:
            return
        self.state.load_state_dict(extra.train.state_dict())
        self.data.follow_curriculum(self.state)  # the loader state is of that stage
        self.data.loader.load_state_dict(extra.loader)
        self.checkpoints.restore_rng(extra.rng_per_rank, self.cfg.trainer.seed, self.state.step)

    # ---------------------------------------------------------------- steps
    def _forward(self, batch: Any, n_directions: int) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
        """The one model call: a batch's logits, loss and aux statistics."""
        b = batch.to(self.device)
        b = with_target_tag(b) if self.cfg.trainer.loss_include_tag else b
        counted = b.target.ne(PAD)  # the vocabulary projection runs only where the loss counts
        with self.autocast:
            logits, aux = self.wrapped(b.src_tokens, b.prev_output_tokens, b.src_lang, b.tgt_lang, output_mask=counted,
                                       aux_loss_scale=float(counted.sum()))  # d(objective)/d(aux loss)
        direction = b.direction[:, None].expand_as(b.target)[counted]
        out = label_smoothed_nll(logits, b.target[counted], self.cfg.optim.label_smoothing, direction, n_directions)
        return out.loss, out, aux

    def _backward(self, batch: Any) -> tuple[Any, dict[str, Any], float]:
        """Forward and backward of one micro-batch; returns the loss output, the aux statistics
        and the objective (loss + aux losses, summed over tokens)."""
        loss, out, aux = self._forward(batch, len(self.directions))
        attached = 0.0  # aux losses whose gradient travels with the layer outputs (FSDP2)
        for key, value in aux.items():
            if key.startswith("loss/"):
                if torch.is_tensor(value) and value.requires_grad:
                    loss = loss + value * out.ntokens  # aux losses are per-token means
                else:
                    attached += float(value) * out.ntokens
        loss.backward()
        return out, aux, float(loss.detach()) + attached

    def train_step(self) -> StepStats:
        """One update: ``trainer.update_freq`` micro-batches, statistics summed over ranks."""
        self.data.follow_curriculum(self.state)
        self.model.train()
        stats = StepStats(len(self.directions))
        n_micro = self.cfg.trainer.update_freq
        for i in range(n_micro):
            batch = next(self.data.loader)
            with sync_gradients(self.wrapped, i == n_micro - 1):  # one all-reduce per update
                out, aux, objective = self._backward(batch)
            stats.add_micro_batch(out, aux, objective)
        if self.world > 1:
            stats.all_reduce(all_sum)
        self._update(stats)
        return stats

    def _update(self, stats: StepStats) -> None:
        """Normalise, clip and apply the gradients (or skip a non-finite update: the step counts,
        the weights and optimizer state do not change)."""
        # Gradients of summed losses, normalised once by all target tokens of the update (DDP/FSDP
        # average over ranks, hence the factor world).
        scale_gradients(self.wrapped, self.world / max(stats.tokens, 1))
        clip = self.cfg.optim.clip_norm
        stats.gnorm = float(clip_grad_norm(self.wrapped, clip if clip > 0 else float("inf"), self.expert_ids))
        stats.lr = scheduled_lr(self.state.step + 1, self.cfg.optim, self.cfg.trainer.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = stats.lr * group.get("lr_scale", 1.0)  # trainer.init_lr_scale
        stats.skipped = int(not stats.finite())
        if not stats.skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.record_update(bool(stats.skipped))
        if stats.skipped:
            log.warning(f"step {self.state.step}: non-finite loss {stats.objective} or gradient norm {stats.gnorm}: "
                        f"update skipped ({self.state.bad_in_a_row} in a row, {self.state.skipped_updates} in total)")

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        finished = self._finished_summary()
        if finished is not None:
            return finished
        n_params = count_parameters(self.model)
        log.info(f"model: {n_params / 1e6:.2f}M parameters; {len(self.directions)} directions; "
                 f"device {self.device}, precision {self.precision}; run dir {self.run_dir}")
        t = self.cfg.trainer
        progress = Progress(t.max_steps, self.state.step, t.max_time_minutes, enabled=t.progress and self.main)
        preemption.install()  # USR1/USR2 (Slurm/submitit, before the time limit) or TERM: save, then stop
        try:
            reason, last_valid = self._loop(progress)
        finally:
            progress.close()
            self.logger.close()
        if reason is StopReason.PREEMPTED:
            self._exit_preempted()
        preemption.uninstall()
        summary = {"step": self.state.step, "stopped_by": reason.value, "best_valid_loss": self.state.best_valid,
                   "best_step": self.state.best_step, "world_size": self.world,
                   "parameters": n_params, "precision": self.precision, **last_valid}
        if self.main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _loop(self, progress: Progress) -> tuple[StopReason, dict[str, Any]]:
        """Train until a stop reason; returns it and the last validation record."""
        t = self.cfg.trainer
        reason = StopReason.MAX_STEPS if self.state.step >= t.max_steps else None
        window = StepStats(len(self.directions))
        last_valid: dict[str, Any] = {}
        while reason is None:
            window.add_update(self.train_step())
            progress.update()
            reason = self.stop.poll(self.state)  # the same answer on every rank
            if reason is StopReason.BAD_UPDATES:
                raise self.stop.bad_updates_error(self.state, self.run_dir / "checkpoints")
            if reason is StopReason.PREEMPTED:
                self._save(["last"])
                return reason, last_valid
            if self.state.step % t.log_interval == 0 or reason is not None:
                self._log_window(window, progress)
                window = StepStats(len(self.directions))
            last_valid = self._validate_and_save(reason is not None, progress) or last_valid
        if not self.validator.enabled:  # no validation: best is the latest
            self._save(["last", "best"])
        return reason, last_valid

    def _log_window(self, window: StepStats, progress: Progress) -> None:
        record = window.record(self.state.step, time.perf_counter() - window.started, self.directions,
                               self.data.record(self.state.stage))
        self.logger.train(record)
        progress.report(record)

    def _validate_and_save(self, final: bool, progress: Progress) -> dict[str, Any] | None:
        """Validate when due (then save last, best when it improved, step_N), else save step_N
        on its interval; returns the validation record, if any."""
        t, step = self.cfg.trainer, self.state.step
        if not self.validator.due(step, final):
            if t.save_interval and step % t.save_interval == 0:
                self._save(["last", f"step_{step}"])
            return None
        record = self.validator.validate(step)
        self.logger.valid({"step": step, **record})
        self._save(self.validator.checkpoint_names(record, self.state, t.save_interval))
        progress.write(f"step {step}: valid loss {record['valid/loss']:.3f} (best {self.state.best_valid:.3f})")
        return record

    def _finished_summary(self) -> dict[str, Any] | None:
        """A finished run started again: its summary (nothing to do)."""
        done, t = self.run_dir / "summary.json", self.cfg.trainer
        if self.state.step < t.max_steps or not done.is_file():
            return None
        log.info(f"{self.run_dir} is complete (step {self.state.step} of trainer.max_steps={t.max_steps}); "
                 f"raise trainer.max_steps with trainer.resume=true to train on")
        return json.loads(done.read_text())

    def _exit_preempted(self) -> None:
        """Exit instead of returning: under submitit a return would record the job as finished
        while Slurm runs it again. No summary.json: the run is not complete."""
        if self.main and preemption.requeue_self():
            log.info("requeued this Slurm job: it resumes from checkpoints/last when it restarts")
        distributed.barrier()
        distributed.shutdown()
        raise SystemExit(0)
