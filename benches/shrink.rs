//! P3: `lotlink::testing::imaging::prepare` on a 1920x1080 photo-like JPEG (quality 90), against
//! `vipsthumbnail` (Debian package `libvips-tools`) making a JPEG whose Base64 fits the same
//! 50,000-character budget from the same file. Prints both medians side by side.
//!
//! vipsthumbnail is timed as a process (start-up included), since that is how it would be
//! used in its place. Without it installed, its half is skipped with a note.

use std::cell::RefCell;
use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use lotlink::testing::imaging::{self, b64_len, ImageAction, MAX_B64_CHARS};

const SAMPLES: usize = 20;

/// Median of the per-iteration times of the last `SAMPLES` samples (the ones criterion keeps;
/// earlier calls were its warm-up).
fn median(samples: &[Duration]) -> Option<Duration> {
    let mut kept = samples[samples.len().saturating_sub(SAMPLES)..].to_vec();
    kept.sort();
    kept.get(kept.len() / 2).copied()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "n/a".to_owned(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1e3),
    )
}

/// Runs `b.iter_custom`, recording the mean time per iteration of every sample.
fn timed(record: &RefCell<Vec<Duration>>, iters: u64, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    let total = start.elapsed();
    record
        .borrow_mut()
        .push(total / u32::try_from(iters.max(1)).unwrap_or(u32::MAX));
    total
}

fn vips_available() -> bool {
    Command::new("vipsthumbnail")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One vipsthumbnail run; returns the output's size in bytes.
fn vips(input: &Path, output: &Path, width: u32, quality: u8) -> Option<usize> {
    let status = Command::new("vipsthumbnail")
        .arg(input)
        .arg("--size")
        .arg(format!("{width}x"))
        .arg("-o")
        .arg(format!("{}[Q={quality},strip]", output.display()))
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    std::fs::metadata(output)
        .ok()
        .and_then(|m| usize::try_from(m.len()).ok())
}

/// A vipsthumbnail setting whose output fits the budget: start from prepare()'s own width and
/// quality, lower the quality in steps down to 50, then the width by 5% at a time.
fn vips_setting(input: &Path, output: &Path, width: u32, quality: u8) -> Option<(u32, u8, usize)> {
    let mut width = width;
    while width >= 64 {
        let mut q = quality.max(50);
        loop {
            let bytes = vips(input, output, width, q)?;
            if b64_len(bytes) <= MAX_B64_CHARS {
                return Some((width, q, bytes));
            }
            if q == 50 {
                break;
            }
            q = q.saturating_sub(5).max(50);
        }
        width = width * 95 / 100;
    }
    None
}

fn p3(c: &mut Criterion) {
    let input = imaging::synth_jpeg(1920, 1080, 42, 90);
    let dir = tempfile::tempdir().expect("temporary directory");
    let in_path = dir.path().join("in_1920x1080_q90.jpg");
    let out_path = dir.path().join("vips_out.jpg");
    std::fs::write(&in_path, &input).expect("write the input JPEG");

    let prepared = imaging::prepare(&input, MAX_B64_CHARS);
    let ImageAction::Shrunk { to, quality, .. } = prepared.action else {
        panic!(
            "prepare() should shrink the 1080p input, got {:?}",
            prepared.action
        );
    };
    println!("P3 input: 1920x1080 q90 synth_jpeg, {} bytes", input.len());
    println!(
        "P3 prepare():      {}x{} q{} -> {} bytes = {} Base64 chars",
        to.0,
        to.1,
        quality,
        prepared.bytes.len(),
        b64_len(prepared.bytes.len())
    );

    let vips_setting = if vips_available() {
        let found = vips_setting(&in_path, &out_path, to.0, quality);
        match found {
            Some((w, q, bytes)) => println!(
                "P3 vipsthumbnail:  --size {w}x -o out.jpg[Q={q},strip] -> {} bytes = {} Base64 chars",
                bytes,
                b64_len(bytes)
            ),
            None => println!("P3 vipsthumbnail: no setting fits the budget; skipping its half"),
        }
        found
    } else {
        println!("P3 vipsthumbnail not found (apt-get install libvips-tools); skipping its half");
        None
    };

    let ours = RefCell::new(Vec::new());
    let theirs = RefCell::new(Vec::new());
    let mut group = c.benchmark_group("P3");
    group.sample_size(SAMPLES);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("prepare_1920x1080", |b| {
        b.iter_custom(|iters| {
            timed(&ours, iters, || {
                black_box(imaging::prepare(black_box(&input), MAX_B64_CHARS));
            })
        });
    });
    if let Some((w, q, _)) = vips_setting {
        group.bench_function("vipsthumbnail_1920x1080", |b| {
            b.iter_custom(|iters| {
                timed(&theirs, iters, || {
                    black_box(vips(&in_path, &out_path, w, q));
                })
            });
        });
    }
    group.finish();

    println!(
        "P3 medians: prepare() {} | vipsthumbnail {}",
        ms(median(&ours.borrow())),
        ms(median(&theirs.borrow()))
    );
    // For benches/run.sh.
    for (key, samples) in [("p3_prepare", &ours), ("p3_vipsthumbnail", &theirs)] {
        if let Some(d) = median(&samples.borrow()) {
            println!("=> {key} {:.3} ms", d.as_secs_f64() * 1e3);
        }
    }
}

criterion_group!(benches, p3);
criterion_main!(benches);
