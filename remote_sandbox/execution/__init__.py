"""The exec machinery every provider drives: request checks, output streams, the exec loop, setup.

A provider starts a command its own way (a launcher in a bubblewrap, a worker shell
in a container) and hands the shared loop a ``RunningCommand``; the loop owns the
deadline, the drain after a kill, the output cap, exit-status decoding and the
``Started``/``Output``/``Exited`` events, so both providers behave alike.
"""
