"""A Container-Optimized OS VM, as far as the trainer's startup script can tell, so the real script runs under bash.

Only what exists on a COS VM alone is replaced, by commands put first on PATH: ``docker`` (runs the trainer
command here and uploads the marker, see :mod:`tests.standins.cos_docker`), ``cos-extensions``,
``docker-credential-gcr``, ``mount`` and ``poweroff`` (logged), and ``hostname`` (the VM's name, as on GCE).
Each call is logged to ``vm.log``; the script's own output goes to ``serial-console.log``, as on a VM.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DOCKER = Path(__file__).with_name("cos_docker.py")
LOGGED_TOOLS = ("cos-extensions", "docker-credential-gcr", "mount", "poweroff")


@dataclass(frozen=True)
class CosMachine:
    """One stand-in VM: a directory holding its PATH stand-ins, its call log and its serial console."""

    root: Path
    hostname: str
    storage_emulator: str

    @classmethod
    def install(cls, root: Path, *, hostname: str, storage_emulator: str) -> CosMachine:
        """Create ``root`` with the stand-in commands; ``storage_emulator`` is where the marker upload goes."""
        machine = cls(root=root, hostname=hostname, storage_emulator=storage_emulator)
        machine.bin_dir.mkdir(parents=True)
        tools = {tool: f'#!/bin/bash\necho "{tool} $*" >> "$VM_LOG"\n' for tool in LOGGED_TOOLS}
        tools["hostname"] = f"#!/bin/bash\necho {shlex.quote(hostname)}\n"
        tools["docker"] = f'#!/bin/bash\nexec {shlex.quote(sys.executable)} {shlex.quote(str(DOCKER))} "$@"\n'
        for tool, text in tools.items():
            path = machine.bin_dir / tool
            path.write_text(text)
            path.chmod(0o755)
        return machine

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def log_path(self) -> Path:
        return self.root / "vm.log"

    @property
    def console_path(self) -> Path:
        return self.root / "serial-console.log"

    def env(self) -> dict[str, str]:
        return {**os.environ, "PATH": f"{self.bin_dir}:{os.environ['PATH']}", "VM_LOG": str(self.log_path),
                "STORAGE_EMULATOR_HOST": self.storage_emulator}

    def boot(self, script: str) -> subprocess.Popen[bytes]:
        """Start the startup script in its own process group (so a deleted VM's trainer dies with it)."""
        with self.console_path.open("ab") as console:
            return subprocess.Popen(["bash", "-c", script], cwd=self.root, env=self.env(), stdout=console,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def run(self, script: str, timeout: float = 60) -> int:
        """Boot and wait for the script to end; its exit status."""
        return self.boot(script).wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def console(self) -> str:
        return self.console_path.read_text() if self.console_path.exists() else ""

    def powered_off(self) -> bool:
        """Whether the script ran ``poweroff`` (on GCE, what turns the instance TERMINATED)."""
        return any(line.startswith("poweroff") for line in self.log().splitlines())
