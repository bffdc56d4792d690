"""TodoWrite: the model's task list, kept by the harness and shown by the driver."""

from __future__ import annotations

from typing import Any

from agent.tools.base import Tool, ToolContext, ToolInputError, ToolResult
from agent.tools.views import CallView, ChecklistItem, ResultView

STATUSES = ("pending", "in_progress", "completed")


class TodoWriteTool(Tool):
    """Replaces the session's task list."""

    name = "TodoWrite"
    read_only = True
    """It changes the harness's list, nothing in the sandbox: plan mode allows it, no one is asked."""
    description = (
        "Create and manage a structured task list for the current session. Send the whole list each "
        "time; mark one task in_progress while you work on it and completed as soon as it is done."
    )
    input_schema = {
        "type": "object",
        "properties": {
            "todos": {
                "type": "array",
                "description": "The updated todo list",
                "items": {
                    "type": "object",
                    "properties": {
                        "content": {"type": "string", "minLength": 1},
                        "status": {"type": "string", "enum": list(STATUSES)},
                        "activeForm": {"type": "string", "minLength": 1},
                    },
                    "required": ["content", "status"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["todos"],
        "additionalProperties": False,
    }

    def summary(self, args: dict[str, Any]) -> str:
        """How many tasks, how many done."""
        items = _items(args)
        done = sum(item.status == "completed" for item in items)
        return f"{self.name}  {done}/{len(items)} done"

    def call_view(self, args: dict[str, Any]) -> CallView:
        """The list as a checklist."""
        return CallView("checklist", self.summary(args), items=_items(args))

    def result_view(self, args: dict[str, Any], result: ToolResult) -> ResultView:
        """Nothing more than the checklist, unless the list was refused."""
        return ResultView("text" if result.is_error else "none", result.content)

    def __init__(self) -> None:
        self.todos: list[dict[str, str]] = []
        """The current list, as the model last sent it."""

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        """Validate and store the list; the driver sees it through the ToolStarted event."""
        todos = args.get("todos")
        if not isinstance(todos, list):
            raise ToolInputError("`todos` must be a list of {content, status} objects.")
        cleaned = []
        for i, item in enumerate(todos):
            if not isinstance(item, dict) or not isinstance(item.get("content"), str) or not item["content"].strip():
                raise ToolInputError(f"todo {i + 1} needs a non-empty `content` string.")
            if item.get("status") not in STATUSES:
                raise ToolInputError(f"todo {i + 1}: `status` must be one of {', '.join(STATUSES)}.")
            cleaned.append({k: str(v) for k, v in item.items() if k in ("content", "status", "activeForm")})
        self.todos = cleaned
        return ToolResult("Todos have been modified successfully. Keep using the todo list to track your progress.")


def _items(args: dict[str, Any]) -> tuple[ChecklistItem, ...]:
    todos = args.get("todos")
    if not isinstance(todos, list):
        return ()
    return tuple(
        ChecklistItem(str(item.get("content", "")), str(item.get("status", "pending")))
        for item in todos
        if isinstance(item, dict)
    )
