"""The one exception type for problems in what the user gave us (config, data, model names, run folders).

The command line prints it as one clear line (one per problem) and exits with status 2. Anything
else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class LmtuneError(Exception):
    """A problem with the user's input. `problems` holds one line per problem found."""

    def __init__(self, *problems: str) -> None:
        self.problems = [p for p in problems if p]
        super().__init__("\n".join(self.problems))
