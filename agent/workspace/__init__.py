"""The session's workspace: the user's project in the sandbox, its checkpoints, and the way back.

- ``settings``: ``[workspace]`` in the settings files (mode, excludes, size caps).
- ``selection`` and ``upload``: which files of a local project a copy workspace starts with.
- ``checkpoints``: after every tool that may change files, what changed goes into the session store;
  every new sandbox of the session starts from the newest checkpoint.
- ``changes``: ``diff``, ``apply`` and ``rewind``, from the store alone.
"""
