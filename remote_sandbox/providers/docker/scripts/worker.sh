# tether exec worker: see remote_sandbox/providers/docker/__init__.py.
# Sourced by a forked subshell of the server with `ctl` and `w` (its path prefix) set.
# Its control FIFO is fd 3 and its request FIFO fd 4, both opened read-write: writes to
# fd 3 never block whether or not the host listens, and fd 4 never reads as EOF. Opening
# fd 3 also closes the server's request FIFO that the fork inherited, so the server's
# death still shows on the host. The worker keeps one *runner* started ahead of time:
# a shell that is already a session leader (setsid: its own session and process group)
# and waits for the next request, so the fork and the execs of setsid and sh are paid
# between commands, not during one. The worker waits for it and reports its end with
# its pid, then starts the next; once the host has retired it (its files are gone) it stops.
# shellcheck shell=sh disable=SC2154
exec 3<>"$w.ctl" 4<>"$w.req" || exit 1
s=setsid
command -v setsid >/dev/null 2>&1 || s=
echo ready >&3
while [ -p "$w.req" ]; do
  $s /bin/sh "$ctl/runner.sh" "$w" <&4 3>&- 4>&- &
  r=$!
  wait $r
  echo "exit $r $?" >&3
done
