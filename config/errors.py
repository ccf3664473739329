"""ConfigError: every problem found in a lab file, each with its key path and what was expected."""

from __future__ import annotations

import attrs


@attrs.frozen
class Problem:
    """One thing wrong in a lab file, at a key path such as `devices.valves.conf.port`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """A lab file that cannot be used; lists all its problems, not just the first."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = str(file)
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.problems)
        head = f"{self.file}: {count} problem{'s' if count != 1 else ''}"
        return "\n".join([head] + [f"  {self.file}: {problem}" for problem in self.problems])
