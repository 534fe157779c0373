"""The collective recorder: one record per collective a backend issues, with its size and duration.

Every backend reports its collectives here, each in the way that fits how it issues them:

- manual: `_launch_bucket` is the one place a bucket all-reduce is issued; it hands the async Work to
  `track` (and the start-up broadcasts go through `timed`).
- ddp: DDP's reducer issues its bucket all-reduces in C++, out of Python's reach. The backend registers
  a DDP communication hook (`gptdist.parallel.ddp.timed_allreduce_hook`) doing exactly what DDP's
  default does (divide by the world size, SUM all-reduce of the flat bucket) and tracks its Work.
  tests/test_instrument_dist.py proves the gradients are bitwise identical with and without it.
- fsdp: FSDP2 issues its all-gathers and reduce-scatters through replaceable "comm" objects
  (`FSDPModule.set_custom_all_gather` / `set_custom_reduce_scatter`, public API in torch >= 2.7). The
  backend installs subclasses of FSDP's own defaults that call the same `dist` function and track the
  Work, one per FSDP group, so every record names its module. Why not the per-module forward/backward
  hooks: they fire on the compute stream around the module, not around the collective, and cannot see
  the collective's size or its Work; why not patching `torch.distributed` globally: it would also catch
  unrelated calls and silently break if FSDP imported the functions under another name.
- blocking calls anywhere (broadcasts at start, the trainer's loss all-reduce, FSDP's grad-norm
  all-reduce, barriers) go through the `timed` context manager.

Timing
- CPU / gloo: issue time = host `perf_counter` just before the call; completion = `perf_counter`
  stamped by a callback on the Work's future (`work.get_future().then(...)`), which gloo runs in its
  worker thread the moment the collective finishes (checked on torch 2.13: it fires before `wait()`
  returns). No blocking, no polling.
- CUDA / NCCL: the host returns from an async collective long before the GPU runs it, so host time
  says nothing. A CUDA event is recorded on the current stream at the issue (the NCCL stream waits
  for that point, so the collective cannot start earlier), and NCCL's own per-Work timing
  (`TORCH_NCCL_ENABLE_TIMING=1`, set by `gptdist.dist.init_distributed` on CUDA; `Work._get_duration()`)
  gives the duration. Blocking calls use events before and after on the current stream. Events are
  read through a device clock (`device_clock.py`; tests pass a simulated GPU, tests/fake_cuda.py).
  With NCCL timing off `_get_duration()` raises (torch 2.13): the collective is still counted (op,
  bytes, label), without a duration, and the run says once why.
- start and end: collectives on one process group run one after another, in issue order (one NCCL
  stream per group; gloo pipelines them in issue order). Records are resolved in issue order per
  group (`queue`): start_i = max(ready_i, end_{i-1}), end_i = start_i + duration_i on CUDA (ready =
  the issuing stream's event), end_i = the completion stamp on CPU. Queued collectives thus each get
  their own duration, not the gap since the previous one finished.

Sizes follow nccl-tests' "size" (see comm_bench/harness.py): the buffer of an all-reduce or broadcast,
the whole gathered output of an all-gather, the whole input of a reduce-scatter. algbw = bytes /
duration; busbw = algbw x busbw_factor(op, n) (2(n-1)/n all-reduce, (n-1)/n all-gather/reduce-scatter,
1 broadcast).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from gptdist.instrument.bus_bandwidth import busbw_factor
from gptdist.instrument.device_clock import CudaClock, host_time
from gptdist.instrument.timeline import Interval


def _queue_name(group) -> str:
    """Collectives of one process group run in issue order (one NCCL stream, one gloo queue)."""
    if group is None or (dist.is_initialized() and group is dist.group.WORLD):
        return "default"
    return f"group{id(group):x}"


@dataclass
class CollectiveRecord:
    op: str  # all_reduce, all_gather, reduce_scatter, broadcast, barrier
    bytes: int  # nccl-tests size (see module docstring)
    dtype: str
    group_size: int
    label: str  # what it belongs to: "bucket=3", "module=transformer.h.0", "loss", ...
    step: int  # optimizer step it ran in (0 = start-up)
    issue_s: float  # host perf_counter when issued
    blocking: bool  # the host waited in the call (nothing else ran on this rank meanwhile)
    end_s: Optional[float] = None  # completion, on the host clock
    failed: bool = False  # the collective completed with an error (timeout, peer gone)
    start_s: Optional[float] = None  # set by `collect`: max(issue, previous end on the same queue)
    queue: str = "default"  # the process group it ran on: collectives of one group run in issue order
    # private: how the end time is obtained
    _future: Any = field(default=None, repr=False)
    _work: Any = field(default=None, repr=False)
    _cuda_events: Any = field(default=None, repr=False)

    @property
    def duration_s(self) -> Optional[float]:
        if self.end_s is None or self.start_s is None:
            return None
        return max(0.0, self.end_s - self.start_s)

    def to_json(self, rank: int, t0: float) -> dict[str, Any]:
        d = self.duration_s
        algbw = self.bytes / d / 1e9 if d and self.bytes else None
        busbw = algbw * busbw_factor(self.op, self.group_size) if algbw and self.op != "barrier" else None
        return {
            "rank": rank, "step": self.step, "op": self.op, "label": self.label, "bytes": self.bytes,
            "dtype": self.dtype, "group_size": self.group_size, "blocking": self.blocking,
            "issue_ms": round((self.issue_s - t0) * 1e3, 4),  # since the recorder's clock sync
            "start_ms": round((self.start_s - t0) * 1e3, 4) if self.start_s is not None else None,
            "duration_ms": round(d * 1e3, 4) if d is not None else None,
            "algbw_gbps": algbw, "busbw_gbps": busbw,
        }


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class NullRecorder:
    """The recorder when instrumentation is off: every method costs one call and does nothing."""

    enabled = False

    def track(self, op, tensor, label, work, nbytes=None, group_size=None, group=None):
        return work

    def timed(self, op, tensor=None, label="", nbytes=None, group_size=None, group=None):
        return contextlib.nullcontext()

    def set_step(self, step: int) -> None:
        pass

    def mark(self, name, index, nbytes):
        pass

    def in_flight(self) -> Optional[str]:
        return None

    def grad_ready(self) -> None:
        pass

    def take_last_grad_ready(self, cuda_ref=None) -> Optional[float]:
        return None

    def take_marks(self, cuda_ref=None) -> list:
        return []

    def collect(self, cuda_ref=None) -> list[CollectiveRecord]:
        return []

    def close(self) -> None:
        pass


class CollectiveRecorder:
    """Records collectives on one rank. Not thread-safe for issuing (collectives are issued from the
    main thread and autograd's thread one at a time); completion callbacks only write their record."""

    enabled = True

    def __init__(self, device: torch.device, rank: int, world_size: int, out_path: Optional[Path] = None,
                 clock=None):
        self.device = device
        self.cuda = device.type == "cuda"
        self.rank = rank
        self.world_size = world_size
        self.step = 0
        self.t0 = time.perf_counter()  # replaced by the clock-sync barrier's exit time
        self._pending: list[CollectiveRecord] = []
        self._last_end: dict[str, float] = {}  # per queue (process group): end of its latest collective
        self.clock = clock if clock is not None else (CudaClock() if self.cuda else None)
        self.now = self.clock.host_now if self.clock is not None else time.perf_counter
        self._grad_event = None  # CUDA: one event, re-recorded at every gradient (see grad_ready)
        self._lock = threading.Lock()
        self._file = open(out_path, "a", buffering=1 << 16) if out_path is not None else None
        self.warned_no_cuda_timing = False
        self.untimed = 0  # CUDA collectives without a duration (NCCL timing off)
        self._marks: list[tuple[str, int, int, float]] = []  # (name, index, bytes, host time) this step
        self._blocking_now: Optional[CollectiveRecord] = None  # inside `timed`, for error messages
        self._last_grad_ready: Optional[float] = None  # see grad_ready

    def mark(self, name: str, index: int, nbytes: int) -> None:
        """Note a moment that is not a collective, e.g. "bucket_ready": gradient bucket `index` (`nbytes`)
        is ready (manual backend: its last gradient arrived; ddp: the reducer called the comm hook). The
        scaling simulator replays these from a 1-rank run. On CUDA the mark is an event on the current stream
        (when the GPU got there, mapped onto the host clock like the phases), not the moment autograd's
        thread, which runs ahead of the GPU, called the hook."""
        self._marks.append((name, int(index), int(nbytes), self.clock.record() if self.cuda else self.now()))

    def take_marks(self, cuda_ref=None) -> list[tuple[str, int, int, float]]:
        """This step's marks with host-clock times (cuda_ref maps CUDA events; see device_clock.py)."""
        marks, self._marks = self._marks, []
        if self.cuda:
            return [(n, i, b, host_time(self.clock, t, cuda_ref)) for n, i, b, t in marks] if cuda_ref else []
        return marks

    def grad_ready(self) -> None:
        """A parameter's gradient was just accumulated. Backends that wait for their collectives inside
        `loss.backward()` (DDP) call this from a post-accumulate-grad hook: the last call of a backward is
        when this rank's backward compute ended; the rest of `backward` was waiting for communication.
        On CUDA the hook runs when autograd's thread enqueued the gradient, long before the GPU computed it:
        there one CUDA event is re-recorded on the current stream, so its last position is when the GPU
        finished the last gradient."""
        if self.cuda:
            self._grad_event = self.clock.record() if self._grad_event is None else self.clock.rerecord(self._grad_event)
            self._last_grad_ready = 0.0  # "an event is pending"
        else:
            self._last_grad_ready = self.now()

    def take_last_grad_ready(self, cuda_ref=None) -> Optional[float]:
        """Host-clock time of this step's last gradient, or None (cuda_ref maps the CUDA event)."""
        t, self._last_grad_ready = self._last_grad_ready, None
        if t is not None and self.cuda:
            return host_time(self.clock, self._grad_event, cuda_ref) if cuda_ref is not None else None
        return t

    # --- issuing -------------------------------------------------------------------------------
    def set_step(self, step: int) -> None:
        self.step = step

    def _new(self, op: str, tensor: Optional[torch.Tensor], label: str, nbytes: Optional[int],
             group_size: Optional[int], blocking: bool, group=None) -> CollectiveRecord:
        if nbytes is None:
            nbytes = tensor.numel() * tensor.element_size() if tensor is not None else 0
        return CollectiveRecord(
            op=op, bytes=int(nbytes), dtype=_dtype_name(tensor.dtype) if tensor is not None else "",
            group_size=group_size or self.world_size, label=label, step=self.step,
            issue_s=self.now(), blocking=blocking, queue=_queue_name(group),
        )

    def track(self, op: str, tensor: Optional[torch.Tensor], label: str, work, nbytes: Optional[int] = None,
              group_size: Optional[int] = None, group=None):
        """Record an async collective just issued (call it right after the call that returned `work`).
        group: its process group (None: the default group).
        Returns `work` (wait on what this returns): unchanged, except a work without a future, which comes
        back wrapped (`_WatchedWork`)."""
        if work is None:  # a synchronous call slipped through: it already finished
            rec = self._new(op, tensor, label, nbytes, group_size, blocking=True, group=group)
            rec.end_s = rec.issue_s
            self._pending.append(rec)
            return work
        rec = self._new(op, tensor, label, nbytes, group_size, blocking=False, group=group)
        if self.cuda:
            # Recorded right after the call: nothing was enqueued on the issuing stream in between, so this
            # is the point the NCCL stream waited for.
            rec._cuda_events = (self.clock.record(), None)
            rec._work = work
        else:
            def stamp(fut, rec=rec):
                rec.end_s = self.now()
                try:
                    fut.value()  # raises if the collective failed
                except Exception:
                    rec.failed = True

            try:
                future = work.get_future()
            except RuntimeError:  # "getFuture not implemented" (gloo's reduce-scatter)
                work = _WatchedWork(work)
                future = work.future
            rec._future = future.then(stamp)
        self._pending.append(rec)
        return work

    @contextlib.contextmanager
    def timed(self, op: str, tensor: Optional[torch.Tensor] = None, label: str = "", nbytes: Optional[int] = None,
              group_size: Optional[int] = None, group=None):
        """Time a blocking collective: `with recorder.timed("broadcast", t, "init"): dist.broadcast(t, 0)`."""
        rec = self._new(op, tensor, label, nbytes, group_size, blocking=True, group=group)
        start_event = self.clock.record() if self.cuda else None
        self._blocking_now = rec
        yield
        self._blocking_now = None
        if self.cuda:
            rec._cuda_events = (start_event, self.clock.record())
        else:
            rec.end_s = self.now()
        self._pending.append(rec)

    def in_flight(self) -> Optional[str]:
        """The oldest collective issued and not finished (or finished with an error), e.g.
        "all_reduce bucket=3 (25.0 MB)", or None.
        Used to name the op when a collective fails or times out."""
        def unfinished(rec: CollectiveRecord) -> bool:
            if rec._work is not None:  # CUDA: ask the work object
                return not rec._work.is_completed()
            return rec._future is not None and rec.end_s is None  # CPU: the completion callback hasn't run

        rec = self._blocking_now or next((r for r in self._pending if r.failed or unfinished(r)), None)
        if rec is None:
            return None
        return f"{rec.op} {rec.label} ({rec.bytes / 1e6:.1f} MB)".replace("  ", " ")

    # --- reading back --------------------------------------------------------------------------
    def _duration_ms(self, work) -> Optional[float]:
        """NCCL's own timing of a Work, or None where it is off (then say once why)."""
        try:
            duration_ms = work._get_duration()
        except Exception as e:  # torch 2.13 raises when TORCH_NCCL_ENABLE_TIMING is off
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            duration_ms = None
        else:
            reason = f"_get_duration() returned {duration_ms}"
        if duration_ms is None or duration_ms < 0:
            self.untimed += 1
            if not self.warned_no_cuda_timing:
                self.warned_no_cuda_timing = True
                print("gptdist: NCCL work timing unavailable (TORCH_NCCL_ENABLE_TIMING=0, or unset when the process "
                      f"group started: {reason}); async collectives are counted (op, bytes) without a duration "
                      "and left out of comm/*; blocking ones are still timed")
            return None
        return duration_ms

    def _resolve(self, rec: CollectiveRecord, cuda_ref) -> None:
        """Set start_s and end_s, in issue order on the record's queue (see the module docstring)."""
        last_end = self._last_end.get(rec.queue, float("-inf"))
        if rec._cuda_events is not None:
            if cuda_ref is None:
                return
            start_event, end_event = rec._cuda_events
            ready = host_time(self.clock, start_event, cuda_ref)
            rec.issue_s = min(rec.issue_s, ready) if rec.blocking else ready
            if end_event is not None:
                rec.end_s = host_time(self.clock, end_event, cuda_ref)
            else:
                duration_ms = self._duration_ms(rec._work)
                if duration_ms is None:
                    return
                rec.end_s = max(ready, last_end) + duration_ms / 1e3
        if rec.end_s is None:
            return
        rec.start_s = max(rec.issue_s, last_end)
        # gloo runs a group's collectives on two worker threads, so one can finish inside its predecessor's
        # interval: it then adds no time of its own (start = end), and the queue's intervals never go back.
        rec.end_s = max(rec.end_s, rec.start_s)
        self._last_end[rec.queue] = max(last_end, rec.end_s)

    def collect(self, cuda_ref: Optional[tuple[Any, float]] = None) -> list[CollectiveRecord]:
        """All records since the last call, finished: waits for their completion callbacks (the
        caller has already waited for the collectives themselves), sets start and end times, writes
        them to collectives.jsonl. cuda_ref: (event, host time) the CUDA times are mapped against."""
        records, self._pending = self._pending, []
        for rec in records:
            if rec._future is not None:
                rec._future.wait()
        for rec in records:  # issue order = execution order on each group
            self._resolve(rec, cuda_ref)
            rec._future = rec._work = rec._cuda_events = None
        if self._file is not None and records:
            self._file.write("".join(json.dumps(r.to_json(self.rank, self.t0)) + "\n" for r in records))
        return records

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _WatchedWork:
    """A Work without a future: gloo's reduce-scatter is an all-reduce into a scratch buffer whose chunk is
    copied into the output inside `wait()` (ProcessGroupGloo's LambdaWork). A daemon thread makes that one
    `wait()` call as soon as the collective is issued, so the record ends when the data is really in place,
    and every caller's `wait()` waits for that thread. (Two threads calling the inner wait() would each copy
    into the output, one possibly after the caller had already used it.)"""

    def __init__(self, work):
        self.future: torch.futures.Future = torch.futures.Future()

        def wait() -> None:
            try:
                work.wait()
                self.future.set_result(None)
            except Exception as e:  # noqa: BLE001 - re-raised by wait(); marks the record failed
                self.future.set_exception(e)

        threading.Thread(target=wait, daemon=True, name="gptdist-work-watch").start()

    def wait(self, timeout=None) -> bool:
        self.future.wait()
        return True

    def get_future(self) -> torch.futures.Future:
        return self.future

    def is_completed(self) -> bool:
        return self.future.done()


def comm_intervals(records: list[CollectiveRecord]) -> list[Interval]:
    return [(r.start_s, r.end_s) for r in records if r.start_s is not None and r.end_s is not None]


def blocking_intervals(records: list[CollectiveRecord]) -> list[Interval]:
    """Collectives the host sat in: no compute was issued (on CPU: ran) on this rank meanwhile."""
    return [(r.start_s, r.end_s) for r in records if r.blocking and r.start_s is not None and r.end_s is not None]
