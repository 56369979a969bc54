#!/usr/bin/env bash
# The benchmark report: P1-P7 of the spine and hardening issues, each beside its anchor
# measured in the same run, written as a Markdown table to BENCHMARKS.md.
#
#   benches/run.sh              # everything (about 15 minutes on 2 cores, most of it P4/P5 set-up)
#   LOTLINK_BENCH_DIR=/mnt/sd benches/run.sh   # measure the outbox on another disk
#   LOTLINK_P6_BIN=target/aarch64-unknown-linux-gnu/dist/lotlink benches/run.sh   # P6 already built
#
# Needs mosquitto (P4, P7 and the RSS anchor) and vipsthumbnail (libvips-tools, P3 anchor);
# P6 needs the aarch64 cross gcc (gcc-aarch64-linux-gnu). A missing tool leaves its row
# "not measured" with the reason. Figures depend on the machine: BENCHMARKS.md says which.
set -euo pipefail
cd "$(dirname "$0")/.."

out=$(mktemp)
trap 'rm -f "$out"' EXIT
note() { echo "# $*" | tee -a "$out"; }

# P4 and P5 measure the gateway as the .deb ships it (profile dist, no default features: no
# demo), not the release build.
note "dist build for P4/P5"
cargo build --locked --profile dist --no-default-features --bin lotlink 2>&1 | tail -n 1 | tee -a "$out"
export LOTLINK_GATEWAY_BIN="${CARGO_TARGET_DIR:-target}/dist/lotlink"
note "pipeline bench (P1 P2 P4 P5 P7)"
cargo bench --locked --bench pipeline 2>&1 | tee -a "$out"
note "shrink bench (P3)"
cargo bench --locked --bench shrink 2>&1 | tee -a "$out"

# P6: the stripped aarch64 binary as the .deb ships it (profile dist). LOTLINK_P6_BIN names
# one already built (e.g. by scripts/package) instead of building it here.
p6_bin=""
if [ -n "${LOTLINK_P6_BIN:-}" ]; then
    p6_bin=$LOTLINK_P6_BIN
    echo "=> p6_aarch64_bytes $(stat -c %s "$LOTLINK_P6_BIN") bytes" | tee -a "$out"
elif command -v aarch64-linux-gnu-gcc >/dev/null && rustup target list --installed 2>/dev/null | grep -q aarch64-unknown-linux-gnu; then
    note "P6 build"
    cargo build --locked --profile dist --no-default-features --target aarch64-unknown-linux-gnu --bin lotlink 2>&1 | tail -n 2 | tee -a "$out"
    p6_bin="${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-gnu/dist/lotlink"
    bytes=$(stat -c %s "$p6_bin")
    echo "=> p6_aarch64_bytes $bytes bytes" | tee -a "$out"
else
    echo "P6 not measured: needs gcc-aarch64-linux-gnu and rustup target aarch64-unknown-linux-gnu" | tee -a "$out"
fi

# The same 1080p shrink by that aarch64 binary under qemu-user and by the host's dist binary:
# a rough guide to the image cost on a Pi (qemu is slower than a real Pi 4).
median_ms() { sed -n 's/.*median \([0-9.]*\) ms.*/\1/p' | tail -n 1; }
if [ -n "$p6_bin" ] && command -v qemu-aarch64 >/dev/null; then
    note "P6 shrink under qemu-aarch64"
    host_ms=$({ "$LOTLINK_GATEWAY_BIN" shrink --repeat 11 2>&1 || true; } | tee -a "$out" | median_ms)
    qemu_ms=$({ qemu-aarch64 -L /usr/aarch64-linux-gnu "$p6_bin" shrink --repeat 11 2>&1 || true; } | tee -a "$out" | median_ms)
    [ -n "$host_ms" ] && echo "=> p6_shrink_host $host_ms ms" | tee -a "$out"
    [ -n "$qemu_ms" ] && echo "=> p6_shrink_qemu_aarch64 $qemu_ms ms" | tee -a "$out"
else
    echo "P6 shrink under qemu not measured: needs the aarch64 binary and qemu-aarch64 (qemu-user)" | tee -a "$out"
fi

# value of a `=> key value unit` line, or empty.
v() { awk -v k="$1" '$1 == "=>" && $2 == k { print $3 }' "$out" | tail -n 1; }
# "figure unit" or "not measured".
show() {
    local x
    x=$(v "$1")
    if [ -n "$x" ]; then printf '%s %s' "$x" "$2"; else printf 'not measured'; fi
}
# pass/MISS by an awk expression over a and b ("" when a figure is missing).
verdict() {
    local a b
    a=$(v "$1")
    b=${3:+$(v "$3")}
    if [ -z "$a" ] || { [ -n "${3:-}" ] && [ -z "$b" ]; }; then echo "—"; return; fi
    if awk -v a="$a" -v b="${b:-0}" "BEGIN { exit !($2) }"; then echo "met"; else echo "**missed**"; fi
}

p1_64=$(v p1_submits_64)
grouped=$(v p1_raw_fsync_grouped)
pct=""
if [ -n "$p1_64" ] && [ -n "$grouped" ]; then
    pct=$(awk -v a="$p1_64" -v b="$grouped" 'BEGIN { printf "%.0f %%", 100 * a / b }')
fi
qemu_ratio=""
if [ -n "$(v p6_shrink_host)" ] && [ -n "$(v p6_shrink_qemu_aarch64)" ]; then
    qemu_ratio=$(awk -v a="$(v p6_shrink_qemu_aarch64)" -v b="$(v p6_shrink_host)" 'BEGIN { printf "%.1f×", a / b }')
fi
p6_mb=""
if [ -n "$(v p6_aarch64_bytes)" ]; then
    p6_mb=$(awk -v b="$(v p6_aarch64_bytes)" 'BEGIN { printf "%.2f MB", b / 1e6 }')
fi

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
    echo "# Benchmarks"
    echo
    echo "Written by \`benches/run.sh\` on $(date -u +'%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'),"
    echo "$(nproc) cores ($cpu), $(free -g | awk '/Mem:/ { print $2 }') GiB, outbox on $(df -h "${LOTLINK_BENCH_DIR:-.}" | awk 'NR == 2 { print $1 }')."
    echo "Anchors are measured in the same run on the same machine. Re-run to refresh; the"
    echo "figures move with the machine's load (a shared CI box can halve the fsync rates)."
    echo
    echo "| | What | lotlink | Anchor (same run) | Target | |"
    echo "|---|---|---|---|---|---|"
    echo "| P1 | durable submits/s, 1 submitter | $(show p1_submits_1 /s) | raw append+fsync each: $(show p1_raw_fsync_each /s) | | |"
    echo "| P1 | durable submits/s, 8 submitters | $(show p1_submits_8 /s) | | | |"
    echo "| P1 | durable submits/s, 64 submitters | $(show p1_submits_64 /s) (${pct:-?} of grouped) | raw grouped fsync (64/fsync): $(show p1_raw_fsync_grouped /s); bare sled, 64 inserts per flush: $(show p1_sled_grouped /s) | ≥ 5,000/s and ≥ 50 % of grouped | $(verdict p1_submits_64 'a >= 5000 && a >= 0.5 * b' p1_raw_fsync_grouped) |"
    echo "| P2 | CPU per uploaded record (100-record batches) | $(show p2_cpu_per_record ms) | | ≤ 1 ms | $(verdict p2_cpu_per_record 'a <= 1') |"
    echo "| P3 | shrink a 1920×1080 JPEG to ≤ 50,000 Base64 chars (median) | $(show p3_prepare ms) | vipsthumbnail, same budget: $(show p3_vipsthumbnail ms) | no slower than vipsthumbnail | $(verdict p3_prepare 'a <= b' p3_vipsthumbnail) |"
    echo "| P4 | RSS, 4 cameras sending, 100,000 pending | $(show p4_rss MB) (peak $(show p4_rss_peak MB)) | idle mosquitto: $(show anchor_mosquitto_rss MB) | | |"
    echo "| P5 | start to first upload, 100,000 pending | $(show p5_first_upload s) | bare sled opening a copy of that store (its log replay) and reading the first record: $(show p5_sled_open s) | ≤ 0.5 s | $(verdict p5_first_upload 'a <= 0.5') |"
    echo "| P5 | RSS after loading them (at the first upload) / after 5,000 uploaded | $(show p5_rss_first MB) / $(show p5_rss_steady MB) | | ≤ 15 MB (after loading) | $(verdict p5_rss_first 'a <= 15') |"
    echo "| P6 | stripped aarch64 binary (profile dist) | ${p6_mb:-not measured} | | ≤ 5 MB | $(verdict p6_aarch64_bytes 'a <= 5000000') |"
    echo "| P6 | 1080p shrink by that binary under qemu-aarch64 (median of 11; qemu is slower than a real Pi) | $(show p6_shrink_qemu_aarch64 ms) (${qemu_ratio:-?} x86) | the host's dist binary: $(show p6_shrink_host ms) | | |"
    echo "| P7 | MQTT event → platform receipt, no image, p50 / p99 | $(show p7_plain_p50 ms) / $(show p7_plain_p99 ms) | | | |"
    echo "| P7 | MQTT event → platform receipt, 400 KB image, p50 / p99 | $(show p7_image_p50 ms) / $(show p7_image_p99 ms) | | | |"
    echo
    echo "Raw lines of this run:"
    echo
    echo '```'
    grep -E '^(P[0-9]|IMG|=>)' "$out" || true
    echo '```'
} > BENCHMARKS.md
echo "wrote BENCHMARKS.md"
