# Shell helpers shared by the bench sections (sourced, not run).

# A port nothing listens on (a connect to it is refused).
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

# utime + stime of a pid, in clock ticks (fields 14 and 15; the comm field
# may hold spaces, so count from the closing parenthesis); 0 once it exited.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ t = $12 + $13 } END { print t + 0 }'; }
