"""A long Markdown answer (headings, lists, code blocks, tables) for the transcript benchmarks."""

from __future__ import annotations


def markdown_answer(chars: int = 20_000) -> str:
    """About ``chars`` characters of Markdown; its last line is ``LAST LINE OF THE ANSWER``."""
    parts: list[str] = []
    section = 0
    while sum(map(len, parts)) < chars - 200:
        section += 1
        parts.append(f"## Section {section}: what the change does\n\n")
        parts.append(
            f"The harness keeps **section {section}** in the log and replays it on resume; "
            "the sandbox is disposable, so every `tool call` is checkpointed after it runs. "
            "This paragraph is long enough to wrap on an 80-column terminal at least once or twice.\n\n"
        )
        parts.append("".join(f"- item {i} of section {section}: `value_{i}` is *kept*\n" for i in range(1, 5)))
        parts.append("\n")
        parts.append(
            "```python\n"
            + "".join(f"def step_{section}_{i}(x: int) -> int:\n    return x * {i} + {section}\n" for i in range(3))
            + "```\n\n"
        )
        parts.append(f"1. first, check section {section}\n2. then apply it\n3. finally commit\n\n")
    parts.append("LAST LINE OF THE ANSWER\n")
    return "".join(parts)
