"""ExitPlanMode: the model presents its plan; the user approves it (and picks the mode to go on in) or keeps planning."""

from __future__ import annotations

import asyncio
from typing import Any

from agent import events as ev
from agent.tools.base import Tool, ToolContext, ToolResult, require
from agent.tools.views import CallView, ResultView


class ExitPlanModeTool(Tool):
    """Asks the user to approve the plan; offered only in plan mode."""

    name = "ExitPlanMode"
    read_only = True
    """It changes nothing in the sandbox; plan mode must let it run."""
    description = (
        "Use this tool when you are in plan mode and have finished planning: it presents your plan to the user "
        "for approval. Pass the whole plan, in Markdown, concise. If the user approves, plan mode ends and you "
        "carry the plan out; if not, keep planning with their feedback."
    )
    input_schema = {
        "type": "object",
        "properties": {"plan": {"type": "string", "description": "The plan to present to the user, in Markdown"}},
        "required": ["plan"],
        "additionalProperties": False,
    }

    def offered_in(self, mode: str) -> bool:
        """Only in plan mode."""
        return mode == "plan"

    def summary(self, args: dict[str, Any]) -> str:
        """A fixed line: the plan itself is the view's text."""
        return f"{self.name}  plan ready for review"

    def call_view(self, args: dict[str, Any]) -> CallView:
        """The plan as Markdown text."""
        plan = args.get("plan")
        return CallView("text", self.summary(args), text=plan if isinstance(plan, str) else "")

    def result_view(self, args: dict[str, Any], result: ToolResult) -> ResultView:
        """What the user decided."""
        return ResultView("text", result.content)

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        """Ask the user; tell the model what they decided."""
        plan = require(args, "plan", str)
        if ctx.emit is None:
            return ToolResult("Nobody can approve a plan in this session; present it as your answer.", is_error=True)
        future: asyncio.Future[ev.PlanDecision] = asyncio.get_running_loop().create_future()
        await ctx.emit(ev.PlanApprovalRequest(ctx.tool_use_id, plan, future))
        decision = await future
        if decision.approve:
            if ctx.set_permission_mode is not None:
                ctx.set_permission_mode(decision.mode)
            await ctx.emit(ev.PermissionModeChanged(decision.mode))
            return ToolResult(
                f"The user approved your plan. Plan mode is off (permission mode: {decision.mode}); "
                "carry out the plan now, starting with its first step."
            )
        feedback = decision.feedback.strip()
        if feedback:
            return ToolResult(
                f"The user did not approve the plan and wants you to keep planning. Their feedback: {feedback}\n"
                "Plan mode stays on: revise the plan with it, then present it again with ExitPlanMode.",
                is_error=True,
            )
        return ToolResult(
            "The user did not approve the plan and wants to keep planning. Plan mode stays on; "
            "wait for the user to say what to change.",
            is_error=True,
            ends_turn=True,
        )
