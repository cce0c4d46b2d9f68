#!/usr/bin/env bash
# A/B two builds of signup under wrk, in ABBA order (this VM drifts by tens of percent within
# minutes, and the second run of a pair is systematically slower), and print each run and the
# medians: registrations/s, p50, the server's mean batch, and the server's CPU per registration;
# and per run, per batch, the time the batch's two serial threads (the RegistrationActor's and
# its SQLite connection's) spent on a core and waiting for one.
#
#   benches/wrk/abba.sh BINARY_A BINARY_B [ROUNDS]     (ROUNDS of ABBA, default 2)
#   PROVIDER=up benches/wrk/abba.sh …                   (a provider that accepts: A's mock-provider)
#   CLIENTS=64 benches/wrk/abba.sh …                    (wrk's connections, default 32)
#
# The setup of README "Where a registration's CPU goes": SQLite, argon2id m=8 KiB t=1 (hashing
# out of the way), no rate limit, the provider refusing connections (127.0.0.1:9), logging as
# shipped (info, to a file), wrk -t2 -c32 -d10s posting unique users (reg.lua). Needs wrk
# (Debian: apt-get install wrk). Loopback only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'pkill -f "^$work/bin-. serve" || true; pkill -f "^$work/bin-a mock-provider" || true; rm -rf "$work"' EXIT
port=${PORT:-18081}
provider=(SIGNUP_EMAIL_SYNC__URL=http://127.0.0.1:9/webhook)

cp "$1" "$work/bin-a"
cp "$2" "$work/bin-b"
if [ "${PROVIDER:-refusing}" = up ]; then
  secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
  "$work/bin-a" mock-provider --quiet --bind "127.0.0.1:$((port + 1))" --secret "$secret" > /dev/null 2>&1 &
  provider=(SIGNUP_EMAIL_SYNC__URL="http://127.0.0.1:$((port + 1))/webhook" SIGNUP_EMAIL_SYNC__SECRET="$secret")
fi

# tid, the three fields of its schedstat (ns on a core, ns runnable and waiting, slices), comm.
sched() {
  for t in /proc/"$pid"/task/*; do
    echo "${t##*/} $(cat "$t/schedstat") $(tr ' ' _ < "$t/comm")"
  done | sort
}

run() {
  local bin=$work/bin-$1
  rm -f "$work"/ab.db*
  (cd "$work" && env $(env | grep -o "^SIGNUP_[A-Z_]*" | sed "s/^/-u /") SIGNUP_SERVER__BIND=127.0.0.1:$port \
    SIGNUP_DATABASE__URL="sqlite://$work/ab.db" SIGNUP_PASSWORD__ARGON2_M_KIB=8 \
    SIGNUP_PASSWORD__ARGON2_T=1 SIGNUP_RATE_LIMIT__PER_MINUTE=0 \
    "${provider[@]}" "$bin" serve > "$work/server.log" 2>&1 &)
  for _ in $(seq 50); do curl -sf "127.0.0.1:$port/health/ready" > /dev/null && break; sleep 0.1; done
  local pid t0 t1 out
  pid=$(pgrep -f "^$bin serve")
  t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  sched > "$work/sched0"
  out=$(wrk -t2 -c"${CLIENTS:-32}" -d10s --latency -s "$here/reg.lua" "http://127.0.0.1:$port")
  sched > "$work/sched1"
  t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  local rate p50
  rate=$(awk '/Requests\/sec/ {print $2}' <<< "$out")
  p50=$(awk '$1 == "50%" {print $2}' <<< "$out")
  curl -s "127.0.0.1:$port/metrics" | awk -v t=$((t1 - t0)) -v tick="$(getconf CLK_TCK)" \
    -v name="$1" -v rate="$rate" -v p50="$p50" '
    /^signup_registration_batch_size_sum/ {s = $2}
    /^signup_registration_batch_size_count/ {c = $2}
    /^signup_registrations_total\{outcome="error"\}/ {e = $2}
    /^signup_email_outbox_pending / {p = $2}
    END {printf "%s %s reg/s  p50 %s  batch %.1f  cpu/reg %.0f us  errors %d  pending at the end %d\n", name, rate, p50, s / c, t / tick * 1e6 / s, e, p}'
  # The batch's serial chain, per batch: the thread running the RegistrationActor (the main
  # thread) and the busiest sqlx SQLite worker (the actor's kept connection), each its time on
  # a core and its time runnable but waiting for one (/proc/<tid>/schedstat, ns).
  local batches
  batches=$(curl -s "127.0.0.1:$port/metrics" | awk '/^signup_registration_batch_size_count/ {print $2}')
  join "$work/sched0" "$work/sched1" | awk -v pid="$pid" -v n="$batches" '
    {run = $6 - $2; wait = $7 - $3}
    $1 == pid {printf "   per batch: actor thread %.2f ms on a core, %.2f waiting for one", run / n / 1e6, wait / n / 1e6}
    $5 ~ /^sqlx-sqlite/ && run > best {best = run; bwait = wait}
    END {printf "; SQLite worker %.2f ms on a core, %.2f waiting for one\n", best / n / 1e6, bwait / n / 1e6}'
  kill "$pid"
  while kill -0 "$pid" 2> /dev/null; do sleep 0.1; done
}

results=$work/results
for _ in $(seq "${3:-2}"); do
  for x in a b b a; do run $x | tee -a "$results"; done
done
for x in a b; do
  awk -v x=$x '$1 == x {print $2, $9}' "$results" | sort -n | awk -v x=$x '
    {r[NR] = $1} END {m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2; printf "%s: median %s reg/s\n", x, m}'
  awk -v x=$x '$1 == x {print $9}' "$results" | sort -n | awk -v x=$x '
    {r[NR] = $1} END {m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2; printf "%s: median %s us CPU per registration\n", x, m}'
done
