"""The session store: append-only JSONL event logs, blobs, conversation rebuilding, the
search index and the `tether sessions` command. See FORMAT.md; the API is session.store."""
