"""The project's exceptions, split by what the caller does with them.

    OrchestrateError                 base; carries the process exit code
    ├── InputError (exit 2)          the user's input is wrong: fix the file or the flag
    │   ├── ManifestError            one or more problems in a manifest, each with file and line
    │   └── PlanError                the manifest is valid but unsafe or impossible to run
    │   (exit 3 is no error: a run that a violation stopped, see results.RunResult)
    ├── EnvironmentProblem (exit 4)  the machine is not ready: start Docker, build an image
    │   ├── DockerUnavailable
    │   └── ImageMissing
    ├── Interrupted (exit 130)       SIGINT or SIGTERM stopped the run
    └── InternalError (exit 70)      a bug in this tool; run again with --debug and report it

The CLI catches OrchestrateError once, prints its message and exits with its
code; nothing else in the package prints.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_AGENT_FAILED = 1
EXIT_INVALID_INPUT = 2
# A violation's policy stopped the run; the evidence is in the run folder.
EXIT_VIOLATION = 3
EXIT_ENVIRONMENT = 4
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class OrchestrateError(Exception):
    """Base of every error this tool raises on purpose."""

    exit_code = EXIT_INTERNAL


class InputError(OrchestrateError):
    exit_code = EXIT_INVALID_INPUT


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest, located as precisely as the input allows."""

    file: str
    line: int | None
    field: str
    message: str
    # Set for problems of the machine rather than of the file, such as "image-missing".
    cause: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"


class ManifestError(InputError):
    """A manifest that cannot be loaded; `problems` lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


class PlanError(ManifestError):
    """A manifest that loads but would break a security invariant or cannot run."""


class EnvironmentProblem(OrchestrateError):
    exit_code = EXIT_ENVIRONMENT


class DockerUnavailable(EnvironmentProblem):
    pass


class ImageMissing(EnvironmentProblem):
    pass


class Interrupted(OrchestrateError):
    exit_code = EXIT_INTERRUPTED


class InternalError(OrchestrateError):
    exit_code = EXIT_INTERNAL
