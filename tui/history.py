"""The prompt history of one project, kept on disk beside its sessions."""

from __future__ import annotations

import json
from pathlib import Path

from session.paths import default_home, project_root

HISTORY_FILE = "prompt-history"
"""The history's file name in the project's folder of the session store (one JSON string a line; not ``.jsonl``, which names session logs)."""

MAX_ENTRIES = 500
"""How many prompts are kept; older ones are dropped when the file is rewritten."""


class PromptHistory:
    """Prompts sent in one project, oldest first; one JSON string per line of a file."""

    def __init__(self, path: Path | None) -> None:
        """Read the history at ``path`` (None: in memory only)."""
        self.path = path
        """The history file, or None when nothing is kept."""
        self.entries: list[str] = self._read()
        """The prompts, oldest first."""

    @classmethod
    def for_project(cls, project_dir: Path, home: Path | None = None) -> PromptHistory:
        """The history of ``project_dir`` under the session store's home."""
        return cls(project_root(home or default_home(), project_dir) / HISTORY_FILE)

    def add(self, prompt: str) -> None:
        """Remember ``prompt`` (a repeat of the newest entry is not added twice)."""
        if not prompt.strip() or (self.entries and self.entries[-1] == prompt):
            return
        self.entries.append(prompt)
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if len(self.entries) > MAX_ENTRIES:
                self.entries = self.entries[-MAX_ENTRIES:]
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.entries))
                tmp.replace(self.path)
            else:
                with self.path.open("a", encoding="utf-8") as file:
                    file.write(json.dumps(prompt, ensure_ascii=False) + "\n")
        except OSError:
            pass  # a history that cannot be saved is a lost convenience, never a reason to fail a prompt

    def _read(self) -> list[str]:
        if self.path is None:
            return []
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []
        entries = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line
            if isinstance(entry, str):
                entries.append(entry)
        return entries[-MAX_ENTRIES:]
