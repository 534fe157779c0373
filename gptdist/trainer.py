"""The one training loop, for every backend.

    Trainer(cfg, ctx).fit()

builds the model on the device, wraps it with `parallelize` (the backend), builds AdamW over the
backend's parameters, and runs optimizer steps of `grad_accum` micro-steps each. The loop talks to the
backend only through `gptdist.parallel.base.Backend`; it has no `if backend == ...`.

One optimizer step, on each rank:
    for each micro-step:  set_grad_sync(last?) -> forward (autocast) -> backward(loss / grad_accum)
    finish_grad_sync -> clip (global norm) -> lr schedule -> backend.optimizer_step -> zero_grad

Measurement (gptdist/instrument/instrumentation.py): each of these is a named phase; the backend
reports its collectives to `self.instr.recorder`; after the step the breakdown (compute, comm,
exposed comm, overlap, memory, CPU) joins the step's metrics, and the run ends with a summary table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from gptdist import checkpoint as ckpt
from gptdist import flops
from gptdist.config import Config, batch_plan, resolve_model
from gptdist.data.loader import TokenLoader
from gptdist.dist import DistContext, synchronize
from gptdist.errors import ConfigError, GptdistError
from gptdist.evals.hellaswag import evaluate_hellaswag, load_hellaswag
from gptdist.evaluate import sample_text, validation_loss
from gptdist.instrument.instrumentation import Instrumentation
from gptdist.instrument.sinks import MetricsLogger
from gptdist.instrument.watchdog import StallWatchdog
from gptdist.model import GPT
from gptdist.optim import lr_at
from gptdist.run_dir import log_to_files_only, prepare_run_dir, setup_logging
from gptdist.tokenizer import GPT2_VOCAB_SIZE
from gptdist.train_step import TrainStep, autocast_context, resolve_dtype


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@dataclasses.dataclass
class StepResult:
    step: int
    loss: float
    lr: float
    grad_norm: float
    step_ms: float
    data_ms: float
    tokens: int  # tokens of the whole step, all ranks together
    skipped: bool = False  # non-finite loss or norm: no update (train.on_nonfinite=skip)
    breakdown: dict[str, Any] = dataclasses.field(default_factory=dict)  # time/*, comm/*, mem/*, host/* keys
    period_ms: float = 0.0  # from the previous step's end to this one's (what throughput sees); see train_step


_TRANSPORT_WORDS = ("nccl", "gloo", "connection", "timed out", "timeout", "socket", "peer", "closed", "broken pipe")


def _mentions_transport(message: str) -> bool:
    """Does an error's text speak of the process group's transport (gloo/NCCL, sockets, timeouts)? Older
    torch raises a plain RuntimeError, not DistError, for a dead peer."""
    text = message.lower()
    return any(word in text for word in _TRANSPORT_WORDS)


class Trainer:
    def __init__(self, cfg: Config, ctx: DistContext):
        # Take SIGTERM from the very start: one that lands during start-up (building, resuming) is voted on
        # at the first step boundary instead of killing the worker unsaved. fit() puts the old handler back.
        self._sigterm_received = False  # this rank's own flag, set by the signal handler, never cleared
        self._previous_sigterm_handler = signal.signal(signal.SIGTERM, self._on_sigterm) if _in_main_thread() else None
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        self.plan = batch_plan(cfg, ctx.world_size)  # raises on impossible batch/world combinations
        if ctx.backend == "fake" and (cfg.checkpoint.every or cfg.checkpoint.at_end or cfg.checkpoint.resume):
            # rank 0's shard of a world that moved no data: a checkpoint of it would be wrong
            raise ConfigError("a GPTDIST_FAKE_WORLD rehearsal saves and resumes no checkpoint: set "
                              "checkpoint.every 0, checkpoint.at_end false and checkpoint.resume ''")
        self.model_config = resolve_model(cfg)
        self.dtype = resolve_dtype(cfg.train.dtype, self.device)
        if self.device.type == "cuda" and cfg.train.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        # Data first: a bad data folder must fail before the run folder or the model exist.
        self.train_loader = TokenLoader(
            cfg.data.dir, "train", cfg.data.batch_size, cfg.data.seq_len,
            rank=ctx.rank, world_size=ctx.world_size, seed=cfg.train.seed,
            vocab_size=self.model_config.vocab_size,
        )
        self.resume_from = self._find_resume_checkpoint()
        self.run_dir = prepare_run_dir(cfg, ctx)
        self.log = setup_logging(self.run_dir, ctx)
        # Before the backend: it records the backend's start-up broadcasts too.
        self.instr = Instrumentation(cfg, ctx, self.run_dir, self.log)

        # Same seed on every rank: identical initial weights (the backends also broadcast from rank 0).
        torch.manual_seed(cfg.train.seed)
        model = GPT(self.model_config).to(self.device)
        # The step itself (compile, backend, optimizer groups, clipping) is gptdist/train_step.py's, the
        # same one the ladder and the throughput benchmark time.
        self.stepper = TrainStep(model, cfg, ctx, self.instr.recorder, phase=self.instr.phase)
        self.backend, self.optimizer = self.stepper.backend, self.stepper.optimizer
        self.step = 0  # optimizer steps done
        if self.resume_from is not None:
            self._resume(self.resume_from)

        self.flops_per_token = flops.flops_per_token(self.model_config, cfg.data.seq_len)
        self.peak_flops = flops.peak_flops(
            self.device, {"bf16": torch.bfloat16, "fp32": torch.float32}[self.dtype],
            override=cfg.train.peak_tflops * 1e12 if cfg.train.peak_tflops else None,
        )
        self.metrics = MetricsLogger(
            self.run_dir, ctx.is_main, cfg.log.tensorboard, cfg.log.wandb, cfg.log.wandb_project,
            self.run_dir.name, cfg.to_dict(),
        )
        self._tokenizer = None
        self._stop_agreed = False  # some rank voted to stop in the last step's all-reduce: the same on every rank
        self._phase = "start-up"  # what the loop is doing, for error messages
        self._hellaswag_items = None
        self._last_step_end: Optional[float] = None  # perf_counter at the end of the previous step (step period)

    # ------------------------------------------------------------------------------------------
    # Resume

    def _find_resume_checkpoint(self) -> Optional[Path]:
        resume = self.cfg.checkpoint.resume
        if not resume:
            return None
        if resume == "auto":
            run_dir = Path(self.cfg.log.out_dir) / self.cfg.log.run_name if self.cfg.log.run_name else None
            found = ckpt.latest_checkpoint(run_dir / "checkpoints") if run_dir else None
            return found  # None: nothing saved yet, start fresh (elastic restarts rely on this)
        return ckpt.resolve(resume)

    def _resume(self, path: Path) -> None:
        with self.stepper.checkpoint_optimizer() as optimizer:
            meta, rank_state = ckpt.load(path, self.backend.module, optimizer, self.model_config, self.ctx)
        self.backend.zero_grad()  # loading may have replaced gradient tensors; let the backend re-arm
        self.step = int(meta["step"])
        if rank_state is not None:
            self.train_loader.load_state_dict(rank_state["loader"])
            ckpt.set_rng_state(rank_state["rng"])
        else:
            # Another world size: a rank's position in the old layout names other tokens in the new one,
            # so the data stream starts again. Weights, optimizer and step are restored exactly.
            self.log.warning(f"resumed at another world size ({meta['world_size']} -> {self.ctx.world_size}): "
                             "the data loader starts from the beginning; resume is exact only at the same world size")
        self.log.info(f"resumed from {path} at step {self.step}")

    def save_checkpoint(self) -> Path:
        self._last_step_end = None  # not a training step: the next step period starts afresh
        rank_state = {"loader": self.train_loader.state_dict(), "rng": ckpt.rng_state()}
        meta = {"backend": self.cfg.backend, "model": ckpt.model_meta(self.model_config), "config": self.cfg.to_dict()}
        with self.stepper.checkpoint_optimizer() as optimizer:
            path = ckpt.save(
                self.run_dir / "checkpoints", self.step, self.backend.module, optimizer, rank_state, meta,
                self.ctx, self.cfg.checkpoint.format, self.cfg.checkpoint.keep_last,
            )
        self.log.info(f"saved checkpoint {path}")
        return path

    # ------------------------------------------------------------------------------------------
    # One optimizer step

    def train_step(self) -> StepResult:
        backend, plan, instr = self.backend, self.plan, self.instr
        backend.module.train()
        # No synchronize here: the previous step ended with one, and one at each end would only add a stall.
        t0 = time.perf_counter()
        instr.begin_step(self.step + 1)
        loss_sum, data_s = self.stepper.forward_backward(
            self.train_loader.next_batch, plan.grad_accum,
            on_micro_step=lambda i: setattr(self, "_phase", f"forward/backward of micro-step {i}"))
        self._phase = "gradient sync"
        grad_norm = self.stepper.sync_and_clip()

        # One small all-reduce carries the loss (for the log) and the stop request (SIGTERM), so every
        # rank agrees on both at the same step boundary.
        self._phase = "loss all-reduce"
        with instr.phase("loss_reduce"):
            packed = torch.stack([loss_sum / plan.grad_accum, torch.tensor(float(self._sigterm_received), device=self.device)])
            if self.ctx.has_group and self.ctx.world_size > 1:
                with instr.recorder.timed("all_reduce", packed, "loss"):
                    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
                packed[0] /= self.ctx.world_size
            loss_value, stop_votes = packed.tolist()  # .tolist() also waits for the device
        # Act on the vote, never on the local flag: a SIGTERM that lands after `packed` was built is in the
        # next step's vote, so all ranks stop after the same step.
        self._stop_agreed = stop_votes > 0
        self.step += 1

        lr = lr_at(self.step - 1, self.cfg.train)
        skipped = not (math.isfinite(loss_value) and math.isfinite(grad_norm))
        if skipped:
            # Every rank sees the same reduced loss and global norm, so all skip (or stop) together.
            message = f"non-finite loss ({loss_value}) or gradient norm ({grad_norm}) at step {self.step}"
            if self.cfg.train.on_nonfinite == "stop":
                raise GptdistError(f"{message}; stopping without saving (lower train.lr or check the data)")
            self.log.warning(f"{message}; skipping the update (train.on_nonfinite=skip)")
        else:
            self._phase = "optimizer"
            self.stepper.update(lr)
        self.stepper.zero_grad()
        synchronize(self.device)
        t_end = time.perf_counter()
        step_s = t_end - t0
        # The step period: from the previous step's end to this one's, so host work between steps (logging,
        # the profiler) counts against throughput. After an evaluation or a checkpoint (or at the first
        # step) there is no previous end to count from: the step's own time stands in.
        period_s = t_end - self._last_step_end if self._last_step_end is not None else step_s
        self._last_step_end = t_end
        breakdown = instr.end_step(step_s * 1e3)
        self._phase = "between steps"
        return StepResult(self.step, loss_value, lr, grad_norm, step_s * 1e3, data_s * 1e3, plan.tokens_per_step, skipped,
                          breakdown, period_s * 1e3)

    # ------------------------------------------------------------------------------------------
    # Evaluation and samples

    def evaluate(self) -> float:
        self._last_step_end = None  # not a training step: the next step period starts afresh
        val = validation_loss(
            self.backend.module, self.cfg.data.dir, self.cfg.data.batch_size, self.cfg.data.seq_len,
            self.cfg.eval.val_batches, self.ctx, autocast=lambda: autocast_context(self.dtype, self.device),
        )
        self.metrics.log("val", self.step, {"loss": val})
        self.log.info(f"step {self.step:>6} | val loss {val:.4f}")
        return val

    def tokenizer(self):
        if self._tokenizer is None:
            from gptdist.tokenizer import get_tokenizer

            self._tokenizer = get_tokenizer()
        return self._tokenizer

    def _has_gpt2_vocab(self) -> bool:
        return self.model_config.vocab_size >= GPT2_VOCAB_SIZE  # test-size vocabularies can't be decoded

    def sample(self) -> list[str]:
        """Text from the current model. Every rank runs it (FSDP's forward needs all ranks);
        rank 0 prints and saves."""
        self._last_step_end = None  # not a training step: the next step period starts afresh
        if not self._has_gpt2_vocab():
            return []
        e = self.cfg.eval
        with autocast_context(self.dtype, self.device):
            texts = sample_text(
                self.backend.raw_model, self.tokenizer(), e.sample_prompt, e.sample_count, e.sample_tokens,
                temperature=e.sample_temperature, top_k=e.sample_top_k, seed=self.cfg.train.seed, device=self.device,
            )
        if self.ctx.is_main:
            with open(self.run_dir / "samples.txt", "a") as f:
                for i, text in enumerate(texts):
                    f.write(f"=== step {self.step} sample {i}\n{text}\n")
                    self.log.info(f"--- sample {i} (step {self.step})\n{text}\n---")
            self.metrics.log("sample", self.step, {"text": texts})
        return texts

    def hellaswag(self) -> Optional[dict[str, float]]:
        """HellaSwag accuracy (items spread over ranks; every rank must call this)."""
        self._last_step_end = None  # not a training step: the next step period starts afresh
        if not self._has_gpt2_vocab():
            return None
        if self._hellaswag_items is None:
            self._hellaswag_items = load_hellaswag()
        result = evaluate_hellaswag(
            self.backend.module, self.tokenizer(), self._hellaswag_items, self.ctx, self.device,
            limit=self.cfg.eval.hellaswag_limit, progress=False,
            autocast=lambda: autocast_context(self.dtype, self.device),
        )
        self.metrics.log("eval", self.step, {"hellaswag_acc_norm": result["acc_norm"], "hellaswag_acc": result["acc"]})
        self.log.info(f"step {self.step:>6} | hellaswag acc_norm {result['acc_norm']:.4f} acc {result['acc']:.4f} (n={result['n']})")
        return result

    # ------------------------------------------------------------------------------------------
    # The loop

    def _log_step(self, r: StepResult) -> None:
        tokens_per_s = r.tokens / (r.period_ms / 1e3)  # all ranks together, over the step period
        # MFU is per device: this rank's share of the tokens against this rank's peak.
        mfu = flops.mfu(tokens_per_s / self.ctx.world_size, self.flops_per_token, self.peak_flops)
        values: dict[str, Any] = {
            "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm, "step_ms": r.step_ms, "period_ms": r.period_ms,
            "data_ms": r.data_ms, "tokens_per_s": tokens_per_s, "mfu": mfu, "tokens": self.step * r.tokens,
            "unix_s": time.time(),  # wall clock at the step's end: plots of loss against real time (evals included)
        }
        if r.skipped:
            values["skipped"] = True
        values.update(r.breakdown)
        self.metrics.log("train", r.step, values)
        if r.step % self.cfg.log.console_every == 0 or r.step == self.cfg.train.max_steps:
            mfu_text = f" | mfu {100 * mfu:5.1f}%" if mfu is not None else ""
            if "comm/total_ms" in r.breakdown:
                mfu_text += f" | comm {r.breakdown['comm/total_ms']:7.1f} ms (exposed {r.breakdown['comm/exposed_ms']:.1f})"
            self.log.info(
                f"step {r.step:>6}/{self.cfg.train.max_steps} | loss {r.loss:.4f} | lr {r.lr:.2e} | "
                f"norm {r.grad_norm:6.3f} | {r.step_ms:8.1f} ms | {tokens_per_s:10,.0f} tok/s{mfu_text}"
            )

    def fit(self) -> dict[str, Any]:
        cfg, plan = self.cfg, self.plan
        self.log.info(
            f"gptdist | backend {cfg.backend} | world {self.ctx.world_size} | device {self.device} | "
            f"dtype {self.dtype} | params {self.backend.raw_model.num_params():,} | "
            f"batch {plan.micro_batch}x{plan.seq_len} x {plan.world_size} ranks x {plan.grad_accum} accum "
            f"= {plan.tokens_per_step:,} tokens/step | run {self.run_dir} | pid {os.getpid()}"
        )
        if self.resume_from is not None and self.step >= cfg.train.max_steps:
            # `checkpoint.resume: auto` met a finished run: leave its checkpoint, samples and summary as they are.
            self.log.info(f"run {self.run_dir} already finished at step {self.step} (train.max_steps "
                          f"{cfg.train.max_steps}): nothing to do; a larger --train.max_steps continues it, "
                          f"another --log.run_name starts a new run")
            return {"steps": self.step, "already_finished": True}
        watchdog = self._stall_watchdog()
        try:
            return self._loop()
        finally:
            if watchdog is not None:
                watchdog.stop()
            if self._previous_sigterm_handler is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm_handler)

    def _stall_watchdog(self) -> Optional[StallWatchdog]:
        """NCCL only: gloo's own timeout already gives the one-line error (instrument/watchdog.py)."""
        if self.ctx.backend != "nccl":
            return None
        status = lambda: (self.step + 1, self._phase, self.instr.recorder.in_flight())  # noqa: E731
        return StallWatchdog(self.ctx.rank, self.cfg.dist.timeout_s, status, self.run_dir / "ranks" / f"rank{self.ctx.rank}",
                             log=self.log.error).start()

    def _on_sigterm(self, signum, frame) -> None:
        # Slurm sends SIGTERM before the time limit; torchrun forwards it to every worker.
        self._sigterm_received = True

    def _train_step_or_explain(self) -> StepResult:
        """train_step, with a failed or timed-out collective turned into a one-line error that says
        which rank, which step and what the loop was doing (instead of a C++ stack)."""
        try:
            return self.train_step()
        except torch.OutOfMemoryError as e:
            p = self.plan
            raise GptdistError(
                f"rank {self.ctx.rank}: out of memory at step {self.step + 1} during {self._phase} (micro-batch "
                f"{p.micro_batch}x{p.seq_len} tokens per rank, {p.grad_accum} accumulation steps): lower "
                f"data.batch_size (accumulation grows to keep train.global_batch_tokens)"
            ) from e
        except (dist.DistError, RuntimeError) as e:
            if not self.ctx.has_group or isinstance(e, GptdistError):
                raise
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            op = self.instr.recorder.in_flight()
            if not (isinstance(e, dist.DistError) or op or _mentions_transport(str(e))):
                raise  # a bug in this rank's own compute (a shape, a dtype): its own message is what helps
            waiting = f", waiting on {op}" if op else ""
            raise GptdistError(
                f"rank {self.ctx.rank}: collective failed at step {self.step + 1} during {self._phase}{waiting} "
                f"(timeout {self.cfg.dist.timeout_s:g}s; another rank may have died or stalled): {first_line}"
            ) from e

    def _loop(self) -> dict[str, Any]:
        cfg = self.cfg
        losses: list[float] = []
        last_val: Optional[float] = None
        while self.step < cfg.train.max_steps:
            result = self._train_step_or_explain()
            losses.append(result.loss)
            self._log_step(result)
            self.instr.after_step()
            last_step = self.step == cfg.train.max_steps
            if (cfg.eval.val_every and self.step % cfg.eval.val_every == 0) or (last_step and cfg.eval.val_every):
                last_val = self.evaluate()
            if cfg.eval.hellaswag_every and (self.step % cfg.eval.hellaswag_every == 0 or last_step):
                self.hellaswag()
            if cfg.eval.sample_every and self.step % cfg.eval.sample_every == 0 and not last_step:
                self.sample()
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and not last_step:
                self.save_checkpoint()
            if self._stop_agreed and not last_step:
                self.log.info(f"SIGTERM: stopping at step {self.step} with a checkpoint (resume with --checkpoint.resume=auto)")
                self.save_checkpoint()
                self.instr.finish()
                return {"steps": self.step, "final_loss": losses[-1], "val_loss": last_val, "losses": losses, "stopped": True}
        if cfg.checkpoint.at_end:
            self.save_checkpoint()
        self.sample()
        summary = {"steps": self.step, "final_loss": losses[-1] if losses else None, "val_loss": last_val, "losses": losses}
        instrument_summary = self.instr.finish()  # collective: every rank
        if instrument_summary is not None:
            summary["instrument"] = instrument_summary
        if self.ctx.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def close(self) -> None:
        self.instr.close()
        self.metrics.close()
        self.backend.close()


def train(cfg: Config, ctx: DistContext) -> dict[str, Any]:
    trainer = Trainer(cfg, ctx)
    try:
        return trainer.fit()
    except GptdistError as e:
        # the run's own log says why it ended: after a multi-node failure the logs are what a user reads
        log_to_files_only(trainer.log, f"error: {e}")
        raise
    finally:
        trainer.close()
