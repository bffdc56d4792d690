# tether exec runner: see remote_sandbox/providers/docker/__init__.py. $1 is its worker's path prefix.
# Reads one request from its stdin (the worker's request FIFO; `read` stops at the
# newline), reports its pid, and sources the command's script, which replaces it with
# the command. It writes its pid through a descriptor of its own that it closes at once:
# an idle runner holds no control FIFO, so a dead worker shows on the host as EOF.
w=$1
read -r verb || exit 0
[ "$verb" = run ] || exit 0
echo "pid $$" 1<>"$w.ctl"
. "$w.sh"
