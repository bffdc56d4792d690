# tether exec server: see remote_sandbox/providers/docker/__init__.py. $1 is the control directory.
# It reads requests with the `read` builtin (one byte at a time from a FIFO, so it never
# swallows the next request), and `kill` is a builtin too: a fork bomb that exhausts the
# pids limit cannot stop it from killing the bomb. `( ... & )` forks twice so each worker
# is reparented to pid 1, which reaps it; the server never accumulates zombies. It holds
# the request FIFO open read-write: it never sees EOF, and the host's non-blocking open
# for writing fails with ENXIO exactly when it is gone. A kill also signals the leader
# by pid while it lives: in an image without setsid it leads no group of its own. Once
# it is reaped its pid may be reused, so not then.
ctl=$1
exec 3<>"$ctl/requests" || exit 1
if command -v setsid >/dev/null 2>&1; then echo ready setsid; else echo ready; fi
exec </dev/null >/dev/null 2>&1
while read -r verb w pgid leader <&3; do
  case $verb in
    spawn) [ -p "$ctl/$w.req" ] && ( w=$ctl/$w; . "$ctl/worker.sh" & ) ;;
    kill)
      kill -9 "-$pgid"
      [ "$leader" = alive ] && kill -9 "$pgid"
      n=0
      while kill -0 "-$pgid" && [ "$n" -lt 200000 ]; do n=$((n + 1)); done
      if [ "$n" -lt 200000 ]; then state=gone; else state=alive; fi
      [ -p "$ctl/$w.ctl" ] && echo "$state" 1<>"$ctl/$w.ctl" ;;
  esac
done
