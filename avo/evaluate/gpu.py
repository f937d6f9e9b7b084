"""GPU selection and exclusivity: which GPUs a run may time on, and one timing job per GPU at a time.

A run uses the GPUs its config names (`evaluator.gpus`; None: every GPU visible to the process). Before a
timing job starts on a GPU it takes an exclusive lock on that GPU, shared by every process on the machine,
so concurrent runs (islands, sweeps, several users' runs, an `avo bench` next to a run) never time on a
shared GPU:

    with gpu_slot(run_gpus(settings.gpus), description="eval seeds/triton_fa") as gpu:
        ...  # the first free GPU of the list, held exclusively until the block ends

How the lock works, and why:

- One lock file per physical GPU, `<lock_dir>/gpu<N>.lock`, locked with `fcntl.flock(LOCK_EX)`. The lock
  directory is machine-wide on purpose (default `/tmp/avo-gpu-locks`, `AVO_GPU_LOCK_DIR` overrides it), so
  runs from different project checkouts see each other. It is created world-writable with the sticky bit
  (like /tmp) and lock files are created mode 0666, so several users' runs share it; flock needs no write
  access, so a lock file another user created is still lockable (the holder description is then not
  written).
- flock locks belong to an open file description: the kernel drops the lock when the last descriptor of it
  is closed, which includes the death of the holding process by any signal (SIGKILL too). A crashed or
  killed run therefore never leaves a GPU locked, and there is no stale-lock cleanup to get wrong. The
  descriptor is opened close-on-exec, so child processes (the evaluator's worker) do not inherit it and
  cannot keep a lock alive after the holder is gone; the holder (the facade) kills its worker's process
  group before it releases.
- Because the lock is per open file description, two `GpuLock` objects in the same process (threads of
  one run) exclude each other exactly as two processes do.
- Lock files are never deleted (deleting a flock'ed file races with a waiter that already opened it). The
  holder writes a JSON description (pid, host, what, since) into its lock file so a waiter can say who it
  waits for; the file is truncated on release.
- Indices are physical (as `nvidia-smi` numbers them, and as the worker's `CUDA_VISIBLE_DEVICES=<N>` pins):
  the same GPU has the same lock file whichever subset of GPUs a process sees.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

log = logging.getLogger(__name__)

DEFAULT_LOCK_DIR = "/tmp/avo-gpu-locks"
LOCK_DIR_ENV = "AVO_GPU_LOCK_DIR"
_NVIDIA_SMI_TIMEOUT_S = 20.0
_GPU_LINE_RE = re.compile(r"^GPU (\d+):.*\(UUID: (GPU-[0-9A-Fa-f-]+)\)")
_MIG_LINE_RE = re.compile(r"^\s+MIG .*\(UUID: (MIG-[^)\s]+)\)")

__all__ = ["visible_gpus", "run_gpus", "GpuLock", "GpuBusyError", "gpu_slot", "lock_dir", "holder"]


class GpuBusyError(TimeoutError):
    """No GPU of the list became free within the timeout."""


# ---------------------------------------------------------------------------------------------- selection


@functools.lru_cache(maxsize=1)
def _nvidia_smi_list() -> Optional[tuple[tuple[int, str, tuple[str, ...]], ...]]:
    """((index, GPU uuid, (MIG uuids...)), ...) from `nvidia-smi -L`; None when it is missing or fails.

    Cached for the process: GPUs do not come and go under a running experiment, and visible_gpus() may be
    called once per evaluation.
    """
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=_NVIDIA_SMI_TIMEOUT_S,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    gpus: list[tuple[int, str, list[str]]] = []
    for line in out.stdout.splitlines():
        m = _GPU_LINE_RE.match(line)
        if m:
            gpus.append((int(m.group(1)), m.group(2), []))
            continue
        m = _MIG_LINE_RE.match(line)
        if m and gpus:
            gpus[-1][2].append(m.group(1))
    return tuple((i, u, tuple(migs)) for i, u, migs in gpus)


def _torch_device_count() -> int:
    """torch's count of visible CUDA devices (0 without torch). torch answers this without creating a
    CUDA context (it asks NVML or the driver), so the caller stays free to fork or pin GPUs afterwards."""
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - no torch or a broken CUDA install: no GPUs as far as we can tell
        return 0


def _uuid_to_index(entry: str, smi) -> Optional[int]:
    """Physical index of a `GPU-...`/`MIG-...` entry (CUDA accepts unique prefixes); MIG maps to its GPU."""
    if not smi:
        return None
    entry = entry.strip()
    hits = {i for i, uuid, migs in smi
            if uuid.lower().startswith(entry.lower()) or any(m.lower().startswith(entry.lower()) for m in migs)}
    return hits.pop() if len(hits) == 1 else None


def parse_cuda_visible_devices(value: str) -> tuple[list[int], bool]:
    """(indices, complete) from a CUDA_VISIBLE_DEVICES value, following CUDA's rules.

    Entries are comma separated; CUDA stops at the first invalid entry (a negative number, junk), so do we.
    An empty value means no GPU. `complete` is False when an entry is a UUID (`GPU-...`, `MIG-...`) that is
    left for the caller to map: the indices returned are then only those before it.
    """
    indices: list[int] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            break
        if entry[:4].upper() in ("GPU-", "MIG-"):
            return indices, False
        try:
            n = int(entry)
        except ValueError:
            break
        if n < 0:
            break
        if n in indices:  # CUDA rejects duplicates: the list ends there
            break
        indices.append(n)
    return indices, True


def visible_gpus() -> list[int]:
    """Physical indices of the GPUs visible to this process, without initialising CUDA here.

    CUDA_VISIBLE_DEVICES set: its integer entries (CUDA's parsing rules; empty means none). UUID entries are
    mapped to physical indices through `nvidia-smi -L`; if that is impossible, the count torch sees is used
    as indices 0..n-1. Not set: every GPU `nvidia-smi -L` lists, else torch.cuda.device_count().
    """
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        indices, complete = parse_cuda_visible_devices(cvd)
        if complete:
            return indices
        smi = _nvidia_smi_list()
        if smi is not None:
            mapped: list[int] = []
            for raw in cvd.split(","):
                entry = raw.strip()
                if entry[:4].upper() in ("GPU-", "MIG-"):
                    n = _uuid_to_index(entry, smi)
                else:
                    n = int(entry) if entry.isdigit() else None
                if n is None or n in mapped:  # CUDA stops at an entry it cannot use; so do we
                    break
                mapped.append(n)
            return mapped
        count = _torch_device_count()
        log.warning("CUDA_VISIBLE_DEVICES=%r names GPUs by UUID and nvidia-smi is not available to map them to "
                    "physical indices: using 0..%d for locking, which other processes may number differently",
                    cvd, count - 1)
        return list(range(count))
    smi = _nvidia_smi_list()
    if smi is not None:
        return [i for i, _, _ in smi]
    return list(range(_torch_device_count()))


def run_gpus(configured: Optional[Sequence[int]] = None) -> list[int]:
    """The GPUs a run may time on: `configured` (the config's `evaluator.gpus`, physical indices) or, when
    None, every visible GPU. Raises ValueError for negative or non-integer entries or an empty result."""
    if configured is None:
        gpus = visible_gpus()
        if not gpus:
            raise ValueError("no GPU is visible to this process (CUDA_VISIBLE_DEVICES, nvidia-smi and torch "
                             "see none): use evaluator.device=cpu, or name GPUs with evaluator.gpus=[0,1]")
        return gpus
    gpus: list[int] = []
    for g in configured:
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise ValueError(f"evaluator.gpus={list(configured)!r}: GPUs are physical indices, non-negative "
                             f"integers like [0, 1]")
        if g not in gpus:
            gpus.append(g)
    if not gpus:
        raise ValueError("evaluator.gpus=[] names no GPU: give indices like [0, 1], or null for all visible GPUs")
    return gpus


# ---------------------------------------------------------------------------------------------- locking


def lock_dir(path: Optional[os.PathLike] = None) -> Path:
    """The machine-wide lock directory (`path`, else $AVO_GPU_LOCK_DIR, else /tmp/avo-gpu-locks), created."""
    d = Path(path or os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)
    if not d.is_dir():
        try:
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o1777)  # shared by every user's runs, like /tmp (sticky: only owners delete)
        except PermissionError:
            pass
        except OSError as exc:
            raise OSError(exc.errno, f"cannot create the GPU lock directory {d} ({exc.strerror}); set "
                                     f"{LOCK_DIR_ENV} to a writable directory shared by all runs") from None
    return d


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """(fd, writable). Read-only when another user's file is not writable to us: flock works all the same."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, 0o666)  # undo the umask so other users' runs can open it read-write too
    except OSError:
        pass
    return fd, True


def holder(gpu: int, path: Optional[os.PathLike] = None) -> Optional[dict]:
    """What the lock file of `gpu` says about its holder ({"pid", "host", "what", "since"}), or None.

    Informational: the file may describe a holder that just released (it is truncated on release).
    """
    try:
        text = (lock_dir(path) / f"gpu{gpu}.lock").read_text()
    except OSError:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _describe(info: Optional[dict]) -> str:
    if not info:
        return "unknown holder"
    parts = [str(info.get("what") or "")]
    if info.get("host") and info.get("host") != socket.gethostname():
        parts.append(f"on {info['host']}")
    if isinstance(info.get("since"), (int, float)):
        parts.append(f"for {max(0.0, time.time() - info['since']):.0f} s")
    return ", ".join(p for p in parts if p)


def _default_description() -> str:
    argv = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)) or "python"
    return argv if len(argv) <= 200 else argv[:197] + "..."


class GpuLock:
    """An exclusive, machine-wide lock on one GPU of a list.

        lock = GpuLock(description="avo eval seeds/triton_fa")
        gpu = lock.acquire([0, 1])        # blocks until GPU 0 or 1 is free; returns the index taken
        ...
        lock.release()

    or as a context manager, `with GpuLock([0, 1]) as gpu: ...`. Not re-entrant: one object holds at most
    one GPU; use one object per concurrent job.
    """

    def __init__(self, gpus: Optional[Sequence[int]] = None, *, description: Optional[str] = None,
                 lock_dir: Optional[os.PathLike] = None, timeout_s: Optional[float] = None,
                 poll_s: float = 0.2) -> None:
        self.gpus = list(gpus) if gpus is not None else None
        self.description = description
        self._lock_dir = lock_dir
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.gpu: Optional[int] = None
        self._fd: Optional[int] = None
        self._writable = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _try(self, directory: Path, gpu: int) -> bool:
        fd, writable = _open_lock_file(directory / f"gpu{gpu}.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd, self._writable, self.gpu = fd, writable, gpu
        if writable:
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "what": self.description or _default_description(), "since": time.time()}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
            except OSError:  # the description is informational; the lock is what matters
                pass
        return True

    def acquire(self, gpus: Optional[Sequence[int]] = None, *, timeout_s: Optional[float] = None,
                poll_s: Optional[float] = None) -> int:
        """Lock the first free GPU of `gpus` (default: the constructor's, else every visible GPU); return it.

        Each GPU is tried without blocking, in order; when all are busy, waits `poll_s` and tries again,
        logging once at INFO whom it waits for. `timeout_s` None waits forever; otherwise GpuBusyError is
        raised after it (0: a single round of tries).
        """
        if self._fd is not None:
            raise RuntimeError(f"this GpuLock already holds GPU {self.gpu}; release it first or use another GpuLock")
        gpus = run_gpus(gpus if gpus is not None else self.gpus)
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        poll_s = self.poll_s if poll_s is None else poll_s
        directory = lock_dir(self._lock_dir)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        logged = False
        while True:
            for gpu in gpus:
                if self._try(directory, gpu):
                    if logged:
                        log.info("got GPU %d", gpu)
                    return gpu
            if not logged:
                who = "; ".join(f"GPU {g} held by pid {(holder(g, directory) or {}).get('pid', '?')} "
                                f"({_describe(holder(g, directory))})" for g in gpus)
                log.info("waiting for %s", who)
                logged = True
            if deadline is not None and time.monotonic() >= deadline:
                held = ", ".join(f"GPU {g}: pid {(holder(g, directory) or {}).get('pid', '?')} "
                                 f"({_describe(holder(g, directory))})" for g in gpus)
                raise GpuBusyError(f"no GPU of {gpus} became free within {timeout_s:g} s ({held}); lock files "
                                   f"in {directory}")
            time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))

    def release(self) -> None:
        """Give the GPU back (a no-op when nothing is held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._writable:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            self.gpu = None

    def __enter__(self) -> int:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock is released with its object, not only with the process
        with contextlib.suppress(Exception):
            self.release()


@contextlib.contextmanager
def gpu_slot(gpus: Optional[Sequence[int]] = None, *, timeout_s: Optional[float] = None,
             description: Optional[str] = None, lock_dir: Optional[os.PathLike] = None,
             poll_s: float = 0.2) -> Iterator[int]:
    """`with gpu_slot([0, 1]) as gpu:` the first free GPU of the list (None: all visible), held for the block."""
    lock = GpuLock(gpus, description=description, lock_dir=lock_dir, timeout_s=timeout_s, poll_s=poll_s)
    gpu = lock.acquire()
    try:
        yield gpu
    finally:
        lock.release()
