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

# A field of /proc/PID/status in KiB (VmRSS, VmHWM).
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }
metric() { # metric NAME LABEL-FILTER < exposition: first matching value
  awk -v n="$1" -v f="$2" 'index($0, n) == 1 && index($0, f) { print $NF; exit }'
}

# Stops the memlensd and the spawn_targets a section started (their pids in
# daemon_pid and spawner_pid), for its EXIT trap and between its rows.
stop_section() {
  [[ -n ${daemon_pid:-} ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  [[ -n ${spawner_pid:-} ]] && kill "$spawner_pid" 2>/dev/null && wait "$spawner_pid" 2>/dev/null
  daemon_pid="" spawner_pid=""
}
