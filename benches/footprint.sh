#!/usr/bin/env bash
# Issue 16's footprint, in one run (about 12 minutes): the real `lotlink` binary (profile
# dist) with its outbox on an ext4 loop device of its own, so /sys/block/loopN/stat sees
# only lotlink's writes (journal included); real mosquitto; the platform simulator.
# benches/footprint.rs does the measuring; this script makes the device, runs it, and writes
# each figure beside its target (met / missed) as Markdown.
#
#   sudo benches/footprint.sh                 # everything; Markdown to stdout and $OUT
#   LOTLINK_FOOTPRINT_ONLY=event,idle benches/footprint.sh
#   LOTLINK_FOOTPRINT_ONLY=backlog,backlog1080,burst benches/footprint.sh   # memory only
#   LOTLINK_FOOTPRINT_IDLE_SECS=300 benches/footprint.sh   # a longer idle window
#   LOTLINK_FOOTPRINT_APPEND=1 benches/footprint.sh        # also append to BENCHMARKS.md
#
# Root is needed for losetup and mount (as in CI). The loop device and mount are removed on
# exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "footprint.sh needs root (losetup, mount)" >&2
    exit 1
fi
for tool in losetup mkfs.ext4 mosquitto faketime; do
    command -v "$tool" >/dev/null || { echo "footprint.sh needs $tool" >&2; exit 1; }
done

work=$(mktemp -d)
mnt="$work/mnt"
dev=""
out="$work/out.txt"
cleanup() {
    if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt" || umount -l "$mnt" || true; fi
    if [ -n "$dev" ]; then losetup -d "$dev" || true; fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# The gateway's profile: dist (what ships) unless LOTLINK_FOOTPRINT_PROFILE says otherwise
# (`dev`: the test build's binary, when a whole-program LTO build cannot be afforded; the
# I/O, flush and wake-up figures do not depend on it, times do).
# LOTLINK_GATEWAY_BIN, if set, is a gateway binary built beforehand (e.g. a release build in
# a target directory of its own): used as it is, nothing built; say its profile in
# LOTLINK_FOOTPRINT_PROFILE so the report names it.
profile="${LOTLINK_FOOTPRINT_PROFILE:-dist}"
echo "# $profile build"
if [ -n "${LOTLINK_GATEWAY_BIN:-}" ]; then
    echo "# gateway binary given: $LOTLINK_GATEWAY_BIN"
else
    if [ "$profile" != dev ]; then
        # (dev: the bench build below builds the binary too, with the test build's features.)
        cargo build --locked --profile "$profile" --bin lotlink 2>&1 | tail -n 1
    fi
    pdir=$([ "$profile" = dev ] && echo debug || echo "$profile")
    LOTLINK_GATEWAY_BIN="${CARGO_TARGET_DIR:-target}/$pdir/lotlink"
fi
export LOTLINK_GATEWAY_BIN
# The measuring side needs no speed: the dev profile reuses the test build.
cargo bench --locked --profile dev --bench footprint --no-run 2>&1 | tail -n 1

# A 2 GiB sparse file; ext4 with its default journal (data=ordered), as on a Pi's card.
truncate -s 2G "$work/disk.img"
mkfs.ext4 -q -F "$work/disk.img"
dev=$(losetup --find --show "$work/disk.img")
mkdir -p "$mnt"
mount -t ext4 "$dev" "$mnt"
export LOTLINK_FOOTPRINT_MNT="$mnt"
export LOTLINK_FOOTPRINT_DEV="${dev#/dev/}"
echo "# outbox on $dev (ext4) at $mnt"

cargo bench --locked --profile dev --bench footprint 2>&1 | tee "$out"

v() { awk -v k="$1" '$1 == "=>" && $2 == k { print $3 }' "$out" | tail -n 1; }
# row label figure target verdict
row() { echo "| $1 | $2 | $3 | $4 |"; }
# ok value op limit -> met/missed
judge() {
    if [ -z "$1" ] || [ "$1" = "NaN" ]; then echo "not measured"; return; fi
    if awk -v a="$1" -v b="$3" -v op="$2" 'BEGIN { exit !((op == "<=") ? (a <= b) : (a >= b)) }'; then
        echo "met"
    else
        echo "**missed**"
    fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "") printf "%.2f", a / b; else print "" }'; }

md="$work/footprint.md"
{
    echo
    echo "## Footprint (issue 16) — $(date -u +%Y-%m-%d), $(git rev-parse --short HEAD)"
    echo
    echo "Command: \`sudo benches/footprint.sh\` (outbox on its own ext4 loop device; real \`lotlink\`"
    echo "profile $profile, mosquitto, the platform simulator; events sent one at a time, each window"
    echo "closed after the 30 s lazy index flush). $(nproc) cores, $(uname -r)."
    echo
    echo "| figure | measured | target | verdict |"
    echo "|---|---|---|---|"
    for k in plain image; do
        ab=$(v anchor_${k}_bytes)
        lim=$([ $k = plain ] && echo 1.5 || echo 1.2)
        for s in up down; do
            b=$(v event_${k}_${s}_bytes)
            r=$(ratio "$b" "$ab")
            row "device bytes per $k event, platform $s" \
                "$b KB, $(v event_${k}_${s}_writes) write I/Os, $(v event_${k}_${s}_flushes) flushes (${r}× the anchor)" \
                "≤ ${lim}× anchor" "$(judge "$r" '<=' "$lim")"
        done
        row "anchor: one fdatasynced append of the $k record ($(v anchor_${k}_record) B)" \
            "$ab KB, $(v anchor_${k}_writes) write I/Os, $(v anchor_${k}_flushes) flushes" "—" "—"
    done
    row "idle: bytes written per hour" "$(v idle_bytes_per_hour) B" "0" "$(judge "$(v idle_bytes_per_hour)" '<=' 0)"
    row "idle: device flushes per hour" "$(v idle_flushes_per_hour)" "≤ 60" "$(judge "$(v idle_flushes_per_hour)" '<=' 60)"
    row "idle: wakeups/s (context switches, all threads)" "$(v idle_wakeups) (mosquitto $(v mosquitto_idle_wakeups))" "≤ 2" "$(judge "$(v idle_wakeups)" '<=' 2)"
    row "idle: threads" "$(v idle_threads) (mosquitto $(v mosquitto_idle_threads))" "—" "—"
    row "idle: CPU s per hour" "$(v idle_cpu_per_hour) (mosquitto $(v mosquitto_idle_cpu_per_hour))" "≤ mosquitto" "$(judge "$(v idle_cpu_per_hour)" '<=' "$(v mosquitto_idle_cpu_per_hour)")"
    row "RSS peak, broker backlog of 10,000 35 KB image events draining into a down platform" \
        "$(v backlog_peak_rss) MB (mosquitto holding them: $(v backlog_mosquitto_rss) MB; drained in $(v backlog_drain) s)" "≤ 48 MB" "$(judge "$(v backlog_peak_rss)" '<=' 48)"
    idle_rss=$(v backlog_idle_rss)
    lim=$(awk -v a="$idle_rss" 'BEGIN { if (a != "") print a + 4 }')
    row "RSS one minute after the drain" "$(v backlog_after_rss) MB (idle $idle_rss MB)" "≤ idle + 4 MB" "$(judge "$(v backlog_after_rss)" '<=' "$lim")"
    if [ -n "$(v backlog1080_peak_rss)" ]; then
        row "RSS peak, broker backlog of 2,000 1080p (≥ 400 KB) image events draining into a down platform" \
            "$(v backlog1080_peak_rss) MB (mosquitto holding them: $(v backlog1080_mosquitto_rss) MB; $(v backlog1080_stored) stored in $(v backlog1080_drain) s)" "≤ 48 MB" "$(judge "$(v backlog1080_peak_rss)" '<=' 48)"
        idle_rss=$(v backlog1080_idle_rss)
        lim=$(awk -v a="$idle_rss" 'BEGIN { if (a != "") print a + 4 }')
        row "RSS one minute after that drain" "$(v backlog1080_after_rss) MB (idle $idle_rss MB)" "≤ idle + 4 MB" "$(judge "$(v backlog1080_after_rss)" '<=' "$lim")"
    fi
    if [ -n "$(v burst_peak_rss)" ]; then
        row "RSS peak, a burst of 300 1080p (≥ 400 KB) image events into a running gateway, platform down" \
            "$(v burst_peak_rss) MB (idle $(v burst_idle_rss) MB; stored in $(v burst_drain) s; a minute after: $(v burst_after_rss) MB)" "≤ 64 MB" "$(judge "$(v burst_peak_rss)" '<=' 64)"
    fi
    row "start with 100,000 pending, dedupe entries older than the window: to READY" "$(v start_ready) s (first upload $(v start_first_upload) s)" "≤ 0.5 s" "$(judge "$(v start_ready)" '<=' 0.5)"
    row "… peak RSS" "$(v start_peak_rss) MB" "≤ 32 MB" "$(judge "$(v start_peak_rss)" '<=' 32)"
    row "start with 100,000 pending filled just before (dedupe entries inside the window): to READY" "$(v start_fresh_ready) s (first upload $(v start_fresh_first_upload) s)" "≤ 0.5 s" "$(judge "$(v start_fresh_ready)" '<=' 0.5)"
    row "… peak RSS" "$(v start_fresh_peak_rss) MB" "≤ 32 MB" "$(judge "$(v start_fresh_peak_rss)" '<=' 32)"
} > "$md"
cat "$md"
if [ "${LOTLINK_FOOTPRINT_APPEND:-0}" = 1 ]; then
    cat "$md" >> BENCHMARKS.md
fi
cp "$md" "${OUT:-/tmp/footprint.md}"
# The raw lines too (per-thread idle wake-ups, per-window device counts).
cp "$out" "${RAW_OUT:-/tmp/footprint.raw.txt}"
