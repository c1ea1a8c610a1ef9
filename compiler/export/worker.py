"""A warm export worker: a child process that gets the exporter ready while the model trains.

The first ONNX export in a process costs about two seconds more than the next ones (importing
torch._dynamo and onnxscript, building the exporter's op registry, first-trace caches). ``convspec
train`` starts this worker as soon as the spec is read; the worker imports the exporter and exports
the spec's architecture once with random weights (``warm``), on one thread, while the parent loads
data and trains, and says when it is done (``{"warm": True}``). A parent training on the CPU either
trains on one thread fewer beside it or pauses it (SIGSTOP, Linux) while it trains, decided from
the spec (``training.device.WorkerShare``). At the end the parent asks for the real
export (:func:`.onnx.export_model` on the run folder) and draws the pictures while the worker
exports: the export leaves the critical path.

Protocol: pickled dicts, one per message, on the child's stdin and on a dedicated pipe (the child's
stdout is pointed at stderr so that no library print can corrupt it). The child's stderr goes to a
temporary file, shown only when it dies. Errors travel as the exception itself (convspec's errors
pickle). Ctrl-C is the parent's: the child ignores SIGINT and is closed by the parent, and it exits
on its own when its stdin closes (a parent killed with -9).

``CONVSPEC_EXPORT_WORKER=0`` turns it off (the export then runs in the training process, as
``convspec export`` always does), and so does less than :data:`MIN_ROOM` of free memory.

Why hand-written and not multiprocessing: spawn re-imports the parent's ``__main__`` and shares
its stdout; a subprocess with its own pipes is simpler to keep quiet and to clean up.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from convspec.specs import ConvspecError, Spec

from ..data.memory import available_bytes
from ..run.folder import Run

if TYPE_CHECKING:
    from .onnx import ExportImages

ENV = "CONVSPEC_EXPORT_WORKER"


# Why: the worker is a second process with torch (after its warm-up 0.4 GiB with torch's CPU build,
# 0.8 GiB with the CUDA build); with less room than this it would take the memory training needs
# (under a 0.75 GiB cgroup limit it got a 1.4 GiB disk-cached run killed), so the export runs in
# the training process at the end instead.
MIN_ROOM = 4 << 30


def worker_enabled() -> bool:
    """Not turned off by ``CONVSPEC_EXPORT_WORKER``, and :data:`MIN_ROOM` free (or unknown)."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    room = available_bytes()
    return room is None or room >= MIN_ROOM


# Why Linux only: a paused (stopped) worker cannot notice that its parent died; there the kernel
# kills it then (PR_SET_PDEATHSIG), elsewhere it would stay stopped forever, so it is never paused.
PAUSABLE = sys.platform.startswith("linux")


class ExportWorker:
    """The parent's handle: :meth:`start`, then :meth:`begin` and :meth:`result`, and :meth:`close`;
    :meth:`pause` and :meth:`resume` around training on the CPU."""

    def __init__(self, proc: subprocess.Popen, replies: IO[bytes], stderr: IO[bytes]):
        self.proc, self._replies, self._stderr = proc, replies, stderr
        self._pending: Run | None = None
        self._warm = False  # the child said its warm-up is over (or it is gone)
        self._guarded = False  # the child said the kernel kills it with this process (it may be paused)
        self._paused = False
        self._sender: threading.Thread | None = None  # writes an export request that holds images

    @classmethod
    def start(cls, spec: Spec) -> ExportWorker | None:
        """A worker warming up on ``spec``'s architecture; None when turned off or it cannot start."""
        if not worker_enabled() or not sys.executable or os.name != "posix":  # Why posix: pass_fds, select on pipes
            return None
        try:
            stderr = tempfile.TemporaryFile(prefix="convspec-export-worker-")
        except OSError:  # a read-only or full temp folder: export in this process, as before
            return None
        r, w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "convspec.compiler.export.worker", str(w), str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(w,),
                env={**os.environ, ENV: "0"},  # Why: a worker never starts a worker of its own
            )
        except OSError:
            os.close(r)
            os.close(w)
            stderr.close()
            return None
        os.close(w)
        worker = cls(proc, os.fdopen(r, "rb"), stderr)
        if not worker._send({"op": "warm", "spec": spec.to_yaml()}):
            worker.close()
            return None
        return worker

    def begin(self, run: Run, int8: bool | None = None, images: ExportImages | None = None) -> bool:
        """Ask for the export of ``run`` (checked on ``images`` when given, else on the run's data loaded
        there); False when the worker is gone (export in-process instead)."""
        self.resume()
        self._pending = run
        message = {"op": "export", "run": str(run.path), "int8": int8, "images": images}
        if images is None:
            return self._send(message)
        # Why a thread: the images are megabytes, more than a pipe holds, and a worker still warming up
        # reads them only when it is done; the caller draws its pictures meanwhile. If the worker dies,
        # result() reads the end of its pipe and the export runs in the caller.
        self._sender = threading.Thread(target=self._send, args=(message,), name="export-request", daemon=True)
        self._sender.start()
        return self.proc.poll() is None

    def pause(self) -> bool:
        """Stop a worker that is still warming up (SIGSTOP), until :meth:`resume`; False when it is
        warm, gone, not yet guarded, or on a system where it is not paused (see :data:`PAUSABLE`).
        Why pause at all: ``training.device.WorkerShare``."""
        if not PAUSABLE or self._paused or not self.warming() or not self._guarded:
            return False
        try:
            os.kill(self.proc.pid, signal.SIGSTOP)
        except OSError:
            return False
        self._paused = True
        return True

    def resume(self) -> None:
        """Let a paused worker go on (SIGCONT)."""
        if self._paused:
            self._paused = False
            with contextlib.suppress(OSError):
                os.kill(self.proc.pid, signal.SIGCONT)

    def warming(self) -> bool:
        """Whether the worker is still warming up (and so using a core); never waits."""
        while not self._warm and select.select([self._replies], [], [], 0)[0]:
            # before an export it says only {"guarded": True} (on Linux), then {"warm": True}
            self._note(self._read())
        if not self._warm and self.proc.poll() is not None:
            self._warm = True
        return not self._warm

    def _note(self, message: dict | None) -> None:
        if message is not None and message.get("guarded"):
            self._guarded = True
        else:  # {"warm": True}, or the end of the pipe (it died)
            self._warm = True

    def result(self, log: Callable[[str], None]) -> dict | None:
        """The export record of :meth:`begin`'s run (its log lines go to ``log``); raises the export's error.

        None when the worker died without answering (the caller exports in-process).
        """
        if self._sender is not None:
            self._sender.join()  # the worker replies only after it has read the whole request
        reply = self._read()
        while reply is not None and (reply.get("guarded") or reply.get("warm")):  # warming() never read them
            self._note(reply)
            reply = self._read()
        if reply is None:
            return None
        for line in reply.get("log", []):
            log(line)
        if "error" in reply:
            raise reply["error"]
        return reply.get("info")

    def _read(self) -> dict | None:
        try:
            return pickle.load(self._replies)
        except Exception:  # Why broad: EOF (it died), or an error class that does not unpickle: export here
            return None

    def close(self) -> None:
        """Stop the worker (at once: whatever it was doing is no longer wanted)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self._sender is not None:
            self._sender.join()  # its write ends with the worker (a broken pipe), before the pipe is closed
        for f in (self.proc.stdin, self._replies, self._stderr):
            if f is not None:
                with contextlib.suppress(OSError):  # Why: a pipe to a dead worker may still hold bytes
                    f.close()

    def _send(self, message: dict) -> bool:
        try:
            # Why protocol 5: numpy arrays go out of their own buffer, not through a copy made for pickle
            pickle.dump(message, self.proc.stdin, protocol=5)
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False


@contextlib.contextmanager
def warm_exporter(spec: Spec, enabled: bool, started: ExportWorker | None = None) -> Iterator[ExportWorker | None]:
    """An :class:`ExportWorker` for ``spec`` (None when not ``enabled`` or turned off), closed on the way out.

    ``started``: a worker the caller started earlier (``convspec train`` starts one before it imports
    torch) and closes itself; it is handed through as it is.
    """
    if started is not None:
        yield started if enabled else None
        return
    worker = ExportWorker.start(spec) if enabled else None
    try:
        yield worker
    finally:
        if worker is not None:
            worker.close()


def export_run(
    worker: ExportWorker | None, run: Run, log: Callable[[str], None], images: ExportImages | None = None
) -> dict:
    """The export record of ``run``, from the worker when it answers, else exported in this process
    (on ``images`` when given)."""
    if worker is not None and worker._pending is not None and worker._pending.path == run.path:
        info = worker.result(log)
        if info is not None:
            return info
    from .onnx import export_model

    return export_model(run, log=log, images=images)


# ------------------------------------------------------------------ the child


def _warm(spec_yaml: str) -> None:
    """Export the spec's architecture once, random weights, one thread: later exports are fast."""
    import torch

    from convspec.specs import load_spec_text

    from ..model.backbone import no_weight_loading
    from ..model.builder import assemble_model
    from .onnx import _export_proto

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Why: the parent is training on these cores
    try:
        spec = load_spec_text(spec_yaml, "<export worker>")
        classes = spec.classes if isinstance(spec.classes, list) else None
        with no_weight_loading():
            model = assemble_model(spec, num_classes=None if classes else 2, class_names=classes)
        _export_proto(model.eval(), spec)
    except Exception:  # Why: warming is a guess at speed; the real export reports any real problem
        pass
    finally:
        torch.set_num_threads(threads)


def _export(message: dict) -> dict:
    from .onnx import export_model

    lines: list[str] = []
    try:
        run = Run(Path(message["run"]))
        info = export_model(run, int8=message.get("int8"), log=lines.append, images=message.get("images"))
        return {"info": info, "log": lines}
    except ConvspecError as e:
        return {"error": e, "log": lines}


def _die_with(parent: int) -> bool:
    """Linux: have the kernel kill this process when ``parent`` dies (a paused worker cannot see its
    stdin close); whether that holds."""
    import ctypes

    pr_set_pdeathsig = 1
    try:
        guarded = ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL) == 0
    except (OSError, AttributeError):
        guarded = False
    if os.getppid() != parent:  # it died before the prctl
        os._exit(0)
    return guarded


def main(argv: list[str]) -> int:
    guarded = PAUSABLE and len(argv) > 1 and _die_with(int(argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Why: Ctrl-C is the parent's to handle; it closes us
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)  # Why: a core the parent's training threads wait for slows each step several-fold
    replies = os.fdopen(int(argv[0]), "wb")
    if guarded:  # the parent may pause us from now on
        pickle.dump({"guarded": True}, replies)
        replies.flush()
    os.dup2(2, 1)  # Why: a library's print must never land in the replies
    requests = sys.stdin.buffer
    while True:
        try:
            message: dict[str, Any] = pickle.load(requests)
        except (EOFError, OSError):
            return 0
        if message["op"] == "warm":
            _warm(message["spec"])
            pickle.dump({"warm": True}, replies)  # the parent may take back the core it left us
            replies.flush()
        elif message["op"] == "export":
            pickle.dump(_export(message), replies)
            replies.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
