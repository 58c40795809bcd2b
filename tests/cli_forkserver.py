"""Test support for ``tests/test_resume.py``: run ``pefthub`` commands fast, and kill one at a step.

- :class:`ForkServer` runs ``pefthub <args>`` (``pefthub.cli.main``, the console script's entry
  point) each in its own process, forked from a server process that has already imported
  ``pefthub.cli``. Importing Lightning takes ~7 s of the ~9 s a tiny run lasts, and a
  kill-and-resume case needs three runs; forking skips the import and nothing else: every
  run is still a separate process with its own working directory, arguments, stdout/stderr
  files and exit status. The server never trains, so no thread or RNG state leaks into the runs.
- :class:`SigkillAtStep` is a Lightning callback (added with ``--trainer.callbacks+=``) that
  SIGKILLs its own process right after a chosen optimiser step, so the kill lands at the same
  step however loaded the machine is. SIGKILL cannot be caught: nothing is flushed or saved.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

TESTS = Path(__file__).resolve().parent


class SigkillAtStep(Callback):
    """Kill this process with SIGKILL right after optimiser step ``step``.

    Args:
        step: ``trainer.global_step`` at which to kill (checked at the end of every batch).
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class ForkServer:
    """A server process (``python tests/cli_forkserver.py``) that runs one command at a time;
    use one server per command that should run concurrently."""

    def __init__(self, env: dict[str, str]) -> None:
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def start(self, args: list[str], cwd: Path) -> None:
        """Start ``pefthub <args>`` in ``cwd``; its output goes to ``cwd/stdout.txt``, ``cwd/stderr.txt``."""
        request = {"args": args, "cwd": str(cwd), "stdout": str(cwd / "stdout.txt"), "stderr": str(cwd / "stderr.txt")}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()

    def wait(self, cwd: Path, timeout: float = 300.0) -> tuple[int, str]:
        """The exit status of the started command (``-signal`` when killed, as ``subprocess``
        reports it) and its stderr."""
        if not select.select([self.process.stdout], [], [], timeout)[0]:
            self.process.kill()  # the server and, with it, the wait for its child
            raise TimeoutError(f"pefthub did not finish within {timeout:.0f} s; its stderr: {cwd / 'stderr.txt'}")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died (exit status {self.process.wait()})")
        return int(json.loads(line)["returncode"]), (cwd / "stderr.txt").read_text()

    def run(self, args: list[str], cwd: Path) -> tuple[int, str]:
        self.start(args, cwd)
        return self.wait(cwd)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def _serve() -> None:
    import pefthub.cli  # the expensive import, done once

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: become `pefthub <args>` in the requested folder
            code = 1
            try:
                os.chdir(request["cwd"])
                for stream, name in ((1, "stdout"), (2, "stderr")):
                    fd = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(fd, stream)
                    os.close(fd)
                sys.argv = ["pefthub", *request["args"]]
                pefthub.cli.main(request["args"])
                code = 0
            except SystemExit as error:
                code = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        sys.stdout.write(json.dumps({"returncode": returncode}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
