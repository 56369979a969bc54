//! The outbox's unit tests: behaviour through the public API, and the faults of the log
//! and the index planted by hand (damaged, missing or stale files; failed writes).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::dedupe;
use super::segments::{self, Kind};
use super::*;
use crate::clock::Clock;

fn meta(plate: &str) -> RecordMeta {
    RecordMeta {
        car_no: Some(plate.to_string()),
        in_out_type: "in".into(),
        in_out_time: "2026-11-28 08:00:00".into(),
        img_name: String::new(),
        node_name: "入口1".into(),
        car_color: Some("蓝".into()),
        car_style: "0".into(),
        car_brand: None,
        remark: None,
        submitted_ms: 1,
        degraded: false,
    }
}

fn rec(key: &str, plate: &str, image: Vec<u8>) -> NewRecord {
    NewRecord {
        source_key: key.into(),
        meta: meta(plate),
        img_name: ImgName::Auto {
            lot: "350".into(),
            node: "入口1".into(),
            stamp: "20261128080000".into(),
        },
        image,
    }
}

/// Bytes of the segment files on disk.
fn log_on_disk(dir: &Path) -> u64 {
    segments::list(&dir.join("ob").join(segments::DIR))
        .unwrap()
        .iter()
        .map(|(_, len)| len)
        .sum()
}

/// Store record "A" in a fresh outbox under `dir` and close it; returns its segment dir.
async fn one_record_then_closed(dir: &Path) -> PathBuf {
    let ob = open(dir, 1 << 30);
    ob.submit(rec("a", "A", vec![1; 300])).await.unwrap();
    dir.join("ob").join(segments::DIR)
}

fn open(dir: &Path, max_disk: u64) -> Outbox {
    Outbox::open(
        &dir.join("ob"),
        OutboxOptions {
            max_disk,
            ..OutboxOptions::default()
        },
    )
    .expect("open")
    .0
}

#[tokio::test]
async fn records_come_back_oldest_first_and_leave_only_when_acked() {
    let d = tempfile::tempdir().unwrap();
    let ob = open(d.path(), 1 << 30);
    for i in 0..5 {
        ob.submit(rec("", &format!("晋A0000{i}"), vec![0xFF, 0xD8, i]))
            .await
            .unwrap();
    }
    let got = ob.peek(3, u64::MAX).unwrap();
    let plates: Vec<_> = got.iter().map(|r| r.meta.car_no.clone().unwrap()).collect();
    assert_eq!(plates, ["晋A00000", "晋A00001", "晋A00002"]);
    assert_eq!(got[0].image, vec![0xFF, 0xD8, 0]);
    assert_eq!(
        got[0].meta.img_name,
        format!("350_入口1_20261128080000_{}.jpg", got[0].id)
    );
    ob.ack(&[got[0].id, got[1].id]).await.unwrap();
    assert_eq!(ob.len(), 3);
    assert_eq!(
        ob.peek(1, u64::MAX).unwrap()[0].meta.car_no.as_deref(),
        Some("晋A00002")
    );
}

#[tokio::test]
async fn the_same_source_key_is_accepted_once() {
    let d = tempfile::tempdir().unwrap();
    let ob = open(d.path(), 1 << 30);
    assert!(matches!(
        ob.submit(rec("cam1/1/晋A1", "晋A1", vec![1]))
            .await
            .unwrap(),
        Submitted::Stored(_)
    ));
    assert_eq!(
        ob.submit(rec("cam1/1/晋A1", "晋A1", vec![1]))
            .await
            .unwrap(),
        Submitted::Duplicate
    );
    assert_eq!(ob.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_are_stored_in_groups_each_key_once_and_the_counters_survive_a_reopen() {
    let d = tempfile::tempdir().unwrap();
    let ob = open(d.path(), 1 << 30);
    // 64 submitters at once, every key twice: the copies may land in one group.
    let mut tasks = Vec::new();
    for i in 0..64u8 {
        let ob = ob.clone();
        tasks.push(tokio::spawn(async move {
            let k = i / 2;
            ob.submit(rec(
                &format!("cam/{k}"),
                &format!("晋A{k:05}"),
                vec![k; 100],
            ))
            .await
        }));
    }
    let mut stored = Vec::new();
    let mut duplicates = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Submitted::Stored(id) => stored.push(id),
            Submitted::Duplicate => duplicates += 1,
        }
    }
    stored.sort_unstable();
    stored.dedup();
    assert_eq!((stored.len(), duplicates), (32, 32));
    assert_eq!(ob.len(), 32);
    let bytes = ob.bytes();
    let plates: std::collections::BTreeSet<_> = ob
        .peek(100, u64::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.meta.car_no.unwrap_or_default())
        .collect();
    assert_eq!(plates.len(), 32, "every key once");
    drop(ob);
    let ob = open(d.path(), 1 << 30);
    assert_eq!((ob.len(), ob.bytes()), (32, bytes), "counters as written");
    let Submitted::Stored(id) = ob.submit(rec("", "晋B1", vec![1])).await.unwrap() else {
        panic!("stored")
    };
    assert!(id > *stored.last().unwrap(), "ids are never reused");
}

#[tokio::test]
async fn dead_letters_keep_the_record_and_the_reason_and_can_be_retried() {
    let d = tempfile::tempdir().unwrap();
    let ob = open(d.path(), 1 << 30);
    let Submitted::Stored(id) = ob.submit(rec("", "BAD", vec![9; 10])).await.unwrap() else {
        panic!()
    };
    ob.dead_letter(id, "1502 参数不符合规定值").await.unwrap();
    assert_eq!((ob.len(), ob.dead_len()), (0, 1));
    let dead = ob.dead_list().unwrap();
    assert_eq!(dead[0].reason, "1502 参数不符合规定值");
    assert_eq!(dead[0].record.image, vec![9; 10]);
    ob.dead_retry(id).await.unwrap();
    assert_eq!((ob.len(), ob.dead_len()), (1, 0));
    ob.dead_letter(id, "again").await.unwrap();
    ob.dead_drop(id).await.unwrap();
    // Only the segment being written is left, and it is what `bytes` counts.
    assert_eq!((ob.len(), ob.dead_len()), (0, 0));
    assert_eq!(ob.bytes(), log_on_disk(d.path()));
}

#[tokio::test]
async fn at_the_quota_old_images_become_placeholders_and_then_submits_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let max = 1 << 20;
    let ob = open(d.path(), max);
    let img = vec![7u8; 200_000];
    let mut ids = Vec::new();
    for i in 0..5 {
        match ob
            .submit(rec("", &format!("P{i}"), img.clone()))
            .await
            .unwrap()
        {
            Submitted::Stored(id) => ids.push(id),
            Submitted::Duplicate => panic!(),
        }
    }
    // The sixth does not fit: the oldest image is replaced, nothing is deleted.
    ob.submit(rec("", "P5", img.clone())).await.unwrap();
    assert_eq!(ob.len(), 6);
    assert!(ob.bytes() <= max);
    assert_eq!(
        ob.bytes(),
        log_on_disk(d.path()),
        "the compacted segment's file is gone"
    );
    let first = &ob.peek(1, u64::MAX).unwrap()[0];
    assert!(first.meta.degraded);
    assert_eq!(first.image, crate::imaging::placeholder_jpeg());
    assert!(first
        .meta
        .remark
        .as_deref()
        .unwrap()
        .contains("outbox full"));
    // A record that cannot fit even with every image replaced: a clear error, and
    // still nothing deleted.
    let before = ob.len();
    let refused = ob.submit(rec("", "HUGE", vec![1u8; 1 << 20])).await;
    assert!(
        matches!(refused, Err(OutboxError::Full { .. })),
        "{refused:?}"
    );
    assert!(refused
        .unwrap_err()
        .to_string()
        .contains("source keeps the event"));
    assert_eq!(ob.len(), before);
    assert!(ob.len() >= 6);
    let all = ob.peek(1000, u64::MAX).unwrap();
    assert_eq!(all.len() as u64, ob.len());
}

/// A broker re-sends a message whose PUBACK a power cut lost, however long ago its record
/// was delivered: the quota deleted that segment within the dedupe window, and the key must
/// still be known after a reopen.
#[tokio::test]
async fn a_key_whose_segment_the_quota_deleted_within_the_window_is_still_a_duplicate_after_a_reopen(
) {
    let d = tempfile::tempdir().unwrap();
    let max = 1 << 20;
    {
        let ob = open(d.path(), max);
        let img = vec![7u8; 200_000];
        for i in 0..5 {
            let Submitted::Stored(id) = ob
                .submit(rec(&format!("k{i}"), &format!("P{i}"), img.clone()))
                .await
                .unwrap()
            else {
                panic!("new key")
            };
            ob.ack(&[id]).await.unwrap();
        }
        // The sixth does not fit: the oldest (delivered) segment is compacted away.
        ob.submit(rec("k5", "P5", img.clone())).await.unwrap();
        assert!(ob.bytes() <= max);
        let segs = segments::list(&d.path().join("ob").join(segments::DIR)).unwrap();
        assert!(segs.len() <= 5, "a segment was deleted: {segs:?}");
        assert_eq!(
            ob.submit(rec("k0", "P0", vec![1])).await.unwrap(),
            Submitted::Duplicate,
            "in memory"
        );
    }
    let ob = open(d.path(), max);
    for i in 0..6 {
        assert_eq!(
            ob.submit(rec(&format!("k{i}"), &format!("P{i}"), vec![1]))
                .await
                .unwrap(),
            Submitted::Duplicate,
            "k{i} after a reopen"
        );
    }
    let keys = d.path().join("ob").join(dedupe::KEYS_DIR);
    assert!(keys.exists(), "the deleted segment's keys were kept");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&keys), 0o700);
        for e in std::fs::read_dir(&keys).unwrap() {
            assert_eq!(mode(&e.unwrap().path()), 0o600);
        }
    }
    assert_eq!(ob.bytes(), log_on_disk(d.path()) + keys_on_disk(d.path()));
}

/// Bytes of the kept-keys files on disk.
fn keys_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("ob").join(dedupe::KEYS_DIR)).map_or(0, |rd| {
        rd.flatten().map(|e| e.metadata().unwrap().len()).sum()
    })
}

#[test]
fn kept_keys_with_a_torn_tail_are_read_to_whole_hashes_and_old_buckets_are_deleted() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("keys");
    let window = 600_000;
    let mut seen = dedupe::Seen::new(window);
    let now = 1_000 * window;
    dedupe::keep(&dir, &seen, &[(11, now - 1_000), (12, now - 2 * window)]).unwrap();
    // A power cut tore an append: 3 bytes of a hash.
    let b = seen.bucket(now - 1_000);
    let f = dir.join(format!("{b}.keys"));
    let mut bytes = std::fs::read(&f).unwrap();
    bytes.extend_from_slice(&[1, 2, 3]);
    std::fs::write(&f, &bytes).unwrap();
    let kept = dedupe::load(&dir, &mut seen, now).unwrap();
    assert_eq!(kept, 8);
    assert!(seen.contains(11, now));
    assert!(!seen.contains(12, now), "past the window");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "the old bucket's file is gone"
    );
    assert_eq!(
        std::fs::metadata(&f).unwrap().len(),
        8,
        "the torn tail is cut"
    );
    dedupe::keep(&dir, &seen, &[(13, now)]).unwrap();
    let mut again = dedupe::Seen::new(window);
    dedupe::load(&dir, &mut again, now).unwrap();
    assert!(again.contains(11, now) && again.contains(13, now));
}

/// The ids of the oldest `max` pending records.
fn peeked_ids(ob: &Outbox, max: usize) -> Vec<u64> {
    ob.peek(max, u64::MAX)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect()
}

/// `tasks` submitters at once, each submitting `per` records made by `make(task, i)`:
/// every answer.
async fn submit_from_many(
    ob: &Outbox,
    tasks: u32,
    per: u32,
    make: fn(u32, u32) -> NewRecord,
) -> Vec<Result<Submitted, OutboxError>> {
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let ob = ob.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..per {
                    out.push(ob.submit(make(t, i)).await);
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

/// Acks run between groups of submits: the counters, the index and the files agree, also
/// after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_running_between_groups_leave_the_counters_true() {
    let d = tempfile::tempdir().unwrap();
    let ob = open(d.path(), 1 << 30);
    let acker = {
        let ob = ob.clone();
        tokio::spawn(async move {
            let mut acked = BTreeSet::new();
            while acked.len() < 600 {
                let ids = peeked_ids(&ob, 7);
                if ids.is_empty() {
                    tokio::task::yield_now().await;
                    continue;
                }
                ob.ack(&ids).await.unwrap();
                acked.extend(ids);
            }
            acked
        })
    };
    let stored: BTreeSet<u64> = submit_from_many(&ob, 32, 40, |t, i| {
        let key = format!("cam{t}/{i}");
        rec(&key, &key, vec![7; 300])
    })
    .await
    .into_iter()
    .map(|r| match r {
        Ok(Submitted::Stored(id)) => id,
        other => panic!("every key is new: {other:?}"),
    })
    .collect();
    let acked = acker.await.unwrap();
    let pending: Vec<u64> = stored.difference(&acked).copied().collect();
    assert_eq!(stored.len(), 32 * 40);
    assert_eq!(peeked_ids(&ob, 10_000), pending);
    assert_eq!(ob.len(), pending.len() as u64);
    drop(ob);
    let ob = open(d.path(), 1 << 30);
    assert_eq!(ob.len(), pending.len() as u64, "the counter from the index");
    assert_eq!(peeked_ids(&ob, 10_000), pending);
    assert_eq!(ob.bytes(), log_on_disk(d.path()));
}

/// Many submitters at the quota: all are answered, none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_at_the_quota_are_all_answered_and_none_is_lost() {
    let d = tempfile::tempdir().unwrap();
    let max = 1 << 20;
    let ob = open(d.path(), max);
    let answers = tokio::time::timeout(
        Duration::from_secs(60),
        submit_from_many(&ob, 16, 10, |t, i| {
            rec("", &format!("P{t}/{i}"), vec![9; 50_000])
        }),
    )
    .await
    .expect("every submit is answered");
    let mut stored: Vec<u64> = answers
        .into_iter()
        .filter_map(|r| match r {
            Ok(Submitted::Stored(id)) => Some(id),
            Ok(Submitted::Duplicate) => panic!("no source key, no duplicate"),
            Err(OutboxError::Full { .. }) => None,
            Err(e) => panic!("{e}"),
        })
        .collect();
    stored.sort_unstable();
    // 8 MB of images into a 1 MiB quota: images were replaced and every record kept
    // (placeholders fit; a segment the quota could not compact would refuse some).
    assert_eq!(stored.len(), 160);
    let all = ob.peek(1000, u64::MAX).unwrap();
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), stored);
    assert!(all.iter().any(|r| r.meta.degraded));
    assert_eq!(ob.len(), stored.len() as u64);
    assert!(ob.bytes() <= max);
    assert_eq!(ob.bytes(), log_on_disk(d.path()));
    drop(all);
    drop(ob);
    let ob = open(d.path(), max);
    assert_eq!(ob.len(), stored.len() as u64);
    assert_eq!(ob.bytes(), log_on_disk(d.path()));
}

/// A crash in the middle of writing a group leaves half an entry at the end of the log.
/// Nobody was answered for it; opening cuts it off and carries on.
#[tokio::test]
async fn a_torn_entry_at_the_end_of_the_log_is_cut_off() {
    let d = tempfile::tempdir().unwrap();
    let dir = one_record_then_closed(d.path()).await;
    let (last, len) = *segments::list(&dir).unwrap().last().unwrap();
    let torn = segments::encode(Kind::Record, 99, 0, 7, &[5; 200]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(segments::path_of(&dir, last))
        .unwrap();
    std::io::Write::write_all(&mut f, &torn[..torn.len() / 2]).unwrap();
    drop(f);
    let ob = open(d.path(), 1 << 30);
    assert_eq!(ob.len(), 1);
    assert_eq!(
        std::fs::metadata(segments::path_of(&dir, last))
            .unwrap()
            .len(),
        len,
        "cut back to the last whole entry"
    );
    ob.submit(rec("b", "B", vec![2; 300])).await.unwrap();
    let plates: Vec<_> = ob
        .peek(10, u64::MAX)
        .unwrap()
        .iter()
        .map(|r| r.meta.car_no.clone().unwrap())
        .collect();
    assert_eq!(plates, ["A", "B"]);
}

/// A segment file removed by hand (or lost by a dying card): its records cannot be
/// sent, but they are not silently forgotten either: they become dead letters that say
/// why, and the outbox carries on.
#[tokio::test]
async fn records_whose_segment_file_is_gone_become_dead_letters_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    let dir = one_record_then_closed(d.path()).await;
    for (seg, _) in segments::list(&dir).unwrap() {
        std::fs::remove_file(segments::path_of(&dir, seg)).unwrap();
    }
    let ob = open(d.path(), 1 << 30);
    assert!(ob.peek(10, u64::MAX).unwrap().is_empty());
    ob.flush().await.unwrap(); // the writer has handled the reader's dead-letter request
    assert_eq!((ob.len(), ob.dead_len()), (0, 1));
    assert!(
        ob.dead_list().unwrap()[0].reason.contains("log segment"),
        "{}",
        ob.dead_list().unwrap()[0].reason
    );
    ob.submit(rec("b", "B", vec![2; 300])).await.unwrap();
    assert_eq!(ob.peek(10, u64::MAX).unwrap().len(), 1);
}

#[tokio::test]
async fn counters_survive_a_reopen() {
    let d = tempfile::tempdir().unwrap();
    let ids = {
        let ob = open(d.path(), 1 << 30);
        let mut ids = vec![];
        for i in 0..3 {
            if let Submitted::Stored(id) = ob
                .submit(rec(&format!("k{i}"), "X", vec![1; 100]))
                .await
                .unwrap()
            {
                ids.push(id);
            }
        }
        ob.dead_letter(ids[0], "r").await.unwrap();
        ids
    };
    let ob = open(d.path(), 1 << 30);
    assert_eq!((ob.len(), ob.dead_len()), (2, 1));
    assert_eq!(
        ob.submit(rec("k1", "X", vec![1])).await.unwrap(),
        Submitted::Duplicate
    );
    let Submitted::Stored(n) = ob.submit(rec("k9", "X", vec![1])).await.unwrap() else {
        panic!()
    };
    assert!(n > ids[2], "ids never go back");
}

#[tokio::test]
async fn space_reports_coalesce_to_the_newest() {
    let d = tempfile::tempdir().unwrap();
    let ob = open(d.path(), 1 << 30);
    assert_eq!(ob.settings().space_to_send(false).unwrap(), None);
    for s in 0..500 {
        ob.settings().set_space(500, s).unwrap();
    }
    let r = ob.settings().space_to_send(false).unwrap().unwrap();
    assert_eq!((r.total, r.surplus), (500, 499));
    ob.settings().space_sent(r.seq).unwrap();
    assert_eq!(ob.settings().space_to_send(false).unwrap(), None);
    assert_eq!(
        ob.settings().space_to_send(true).unwrap().unwrap().surplus,
        499
    );
    assert_eq!(
        ob.settings().set_space(500, 499).unwrap(),
        None,
        "no change, no report"
    );
}

#[test]
fn a_garbage_record_value_is_an_error_not_a_panic() {
    for v in [
        &b""[..],
        b"\x01",
        b"\x01\xff\xff\xff\xff{}",
        b"\x02abc",
        b"\x01\x00\x00\x00\x02{}",
    ] {
        let _ = decode_record(1, v);
    }
    assert!(decode_record(1, b"\x01\x00\x00\x00\x02{}").is_err());
}

#[test]
fn auto_image_names_fit_50_chars_and_keep_the_id() {
    let n = ImgName::Auto {
        lot: "350".into(),
        node: "一个非常非常非常非常非常非常非常非常非常非常非常长的出入口名称".into(),
        stamp: "20261128080000".into(),
    }
    .render(123_456_789);
    assert!(n.chars().count() <= 50, "{n}");
    assert!(n.ends_with("_20261128080000_123456789.jpg"), "{n}");
}

/// The store's path under a test directory.
fn store(dir: &Path) -> PathBuf {
    dir.join("ob")
}

/// sled's files in a store.
fn sled_files(path: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            matches!(n.as_str(), "conf" | "db" | "blobs") || n.starts_with("snap.")
        })
        .map(|e| e.path())
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

/// Copy the index (sled's files) aside, as it is on disk now.
fn save_index(path: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in sled_files(path) {
        copy_tree(&f, &to.join(f.file_name().unwrap()));
    }
}

/// The index as it was when saved: what a crash leaves when the index's newest changes
/// had not been flushed.
fn restore_index(path: &Path, from: &Path) {
    lose_index(path);
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        copy_tree(&e.path(), &path.join(e.file_name()));
    }
}

/// Delete sled's files: the index is gone.
fn lose_index(path: &Path) {
    for f in sled_files(path) {
        if f.is_dir() {
            std::fs::remove_dir_all(f).unwrap();
        } else {
            std::fs::remove_file(f).unwrap();
        }
    }
}

fn plates(ob: &Outbox) -> Vec<String> {
    ob.peek(10_000, u64::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.meta.car_no.unwrap_or_default())
        .collect()
}

/// A store of `n` records with 20 KB images in segments of 64 KiB (about three each),
/// closed again; their ids.
async fn several_segments(dir: &Path, n: u32) -> Vec<u64> {
    let ob = open(dir, 2 << 20);
    let mut ids = Vec::new();
    for i in 0..n {
        match ob
            .submit(rec(
                &format!("k{i}"),
                &format!("P{i}"),
                vec![u8::try_from(i % 200).unwrap(); 20_000],
            ))
            .await
            .unwrap()
        {
            Submitted::Stored(id) => ids.push(id),
            Submitted::Duplicate => panic!("new key"),
        }
    }
    assert!(
        segments::list(&store(dir).join(segments::DIR))
            .unwrap()
            .len()
            >= 3
    );
    ids
}

fn ids_of(ob: &Outbox) -> Vec<u64> {
    peeked_ids(ob, 10_000)
}

#[tokio::test]
async fn records_the_index_lost_in_a_crash_are_replayed_from_the_log() {
    let d = tempfile::tempdir().unwrap();
    let saved = d.path().join("saved");
    let later: Vec<u64>;
    {
        let ob = open(d.path(), 1 << 30);
        ob.submit(rec("a", "A", vec![1; 300])).await.unwrap();
        ob.flush().await.unwrap();
        save_index(&store(d.path()), &saved);
        let mut ids = vec![];
        for (k, p) in [("b", "B"), ("c", "C")] {
            if let Submitted::Stored(id) = ob.submit(rec(k, p, vec![2; 300])).await.unwrap() {
                ids.push(id);
            }
        }
        later = ids;
    }
    // The index as the crash left it: without B and C.
    restore_index(&store(d.path()), &saved);
    let (ob, report) = Outbox::open(&store(d.path()), OutboxOptions::default()).unwrap();
    assert!(report.replayed >= 2, "{report:?}");
    assert!(report.rebuilt.is_none(), "replayed from m/wal, not rebuilt");
    let all = ob.peek(10, u64::MAX).unwrap();
    let p: Vec<_> = all.iter().map(|r| r.meta.car_no.clone().unwrap()).collect();
    assert_eq!(p, ["A", "B", "C"], "replayed, in order");
    assert_eq!(all[1].image, vec![2; 300], "intact");
    assert_eq!(all.iter().skip(1).map(|r| r.id).collect::<Vec<_>>(), later);
    assert_eq!(ob.len(), 3);
    assert_eq!(
        ob.submit(rec("c", "C", vec![2])).await.unwrap(),
        Submitted::Duplicate,
        "the dedupe window came back too"
    );
    let Submitted::Stored(n) = ob.submit(rec("d", "D", vec![3])).await.unwrap() else {
        panic!()
    };
    assert!(n > later[1], "ids never go back");
    assert_eq!(ob.bytes(), log_on_disk(d.path()));
}

#[tokio::test]
async fn acks_the_index_lost_in_a_crash_are_replayed_from_their_marks_in_the_log() {
    let d = tempfile::tempdir().unwrap();
    let saved = d.path().join("saved");
    {
        let ob = open(d.path(), 1 << 30);
        for (k, p) in [("a", "A"), ("b", "B"), ("c", "C")] {
            ob.submit(rec(k, p, vec![1; 100])).await.unwrap();
        }
        ob.flush().await.unwrap();
        save_index(&store(d.path()), &saved);
        let ids = peeked_ids(&ob, 2);
        ob.ack(&ids).await.unwrap();
        assert_eq!(plates(&ob), ["C"]);
    }
    restore_index(&store(d.path()), &saved);
    let ob = open(d.path(), 1 << 30);
    assert_eq!(plates(&ob), ["C"], "delivered records stay delivered");
    assert_eq!(ob.len(), 1);
}

#[tokio::test]
async fn with_the_index_gone_the_log_rebuilds_the_pending_records_and_the_dedupe_window() {
    let d = tempfile::tempdir().unwrap();
    {
        let ob = open(d.path(), 1 << 30);
        for i in 0..5 {
            ob.submit(rec(&format!("k{i}"), &format!("P{i}"), vec![1; 100]))
                .await
                .unwrap();
        }
        let ids = peeked_ids(&ob, 2);
        ob.ack(&ids).await.unwrap();
        let dead = peeked_ids(&ob, 1)[0];
        ob.dead_letter(dead, "1502 bad").await.unwrap();
    }
    lose_index(&store(d.path()));
    let (ob, report) = Outbox::open(&store(d.path()), OutboxOptions::default()).unwrap();
    assert!(report.rebuilt.is_some(), "{report:?}");
    assert_eq!(
        plates(&ob),
        ["P3", "P4"],
        "acked and dead-lettered records stay gone"
    );
    assert_eq!((ob.len(), ob.dead_len()), (2, 1));
    assert!(ob.rebuilt_recently().is_some(), "reported");
    assert_eq!(
        ob.submit(rec("k0", "P0", vec![1])).await.unwrap(),
        Submitted::Duplicate,
        "a delivered key of the window is still refused once"
    );
}

/// A zero-byte `snap.*.generating` (a snapshot cut short by a full disk or a power cut)
/// must cost at most the index, never the records.
#[tokio::test]
async fn a_stale_snapshot_file_costs_at_most_the_index_never_the_records() {
    let d = tempfile::tempdir().unwrap();
    let ids = several_segments(d.path(), 20).await;
    std::fs::write(
        store(d.path()).join("snap.0000000000ABCDEF.generating"),
        b"",
    )
    .unwrap();
    let (ob, report) = Outbox::open(&store(d.path()), OutboxOptions::default()).unwrap();
    assert_eq!(ids_of(&ob), ids, "{report:?}");
    assert_eq!(ob.len(), 20);
    assert!(
        store(d.path()).join(segments::DIR).exists(),
        "the log stays where it is"
    );
}

#[tokio::test]
async fn a_truncated_sled_db_costs_the_index_not_the_records() {
    let d = tempfile::tempdir().unwrap();
    let ids = several_segments(d.path(), 20).await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(store(d.path()).join("db"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let (ob, report) = Outbox::open(&store(d.path()), OutboxOptions::default()).unwrap();
    assert_eq!(ids_of(&ob), ids, "{report:?}");
    assert_eq!(ob.len(), 20);
}

#[tokio::test]
async fn an_emptied_sled_conf_costs_the_index_not_the_records() {
    let d = tempfile::tempdir().unwrap();
    let ids = several_segments(d.path(), 20).await;
    std::fs::write(store(d.path()).join("conf"), b"").unwrap();
    let (ob, report) = Outbox::open(&store(d.path()), OutboxOptions::default()).unwrap();
    assert_eq!(ids_of(&ob), ids, "{report:?}");
    assert_eq!(ob.len(), 20);
}

#[tokio::test]
async fn garbage_over_sleds_files_moves_only_them_aside_and_keeps_every_record() {
    let d = tempfile::tempdir().unwrap();
    let path = store(d.path());
    let ids = several_segments(d.path(), 12).await;
    {
        let ob = open(d.path(), 2 << 20);
        ob.settings().set_ts_unit("s").unwrap();
        ob.flush().await.unwrap();
    }
    // Garbage over sled's files, as a dying SD card might leave them.
    for f in ["conf", "db"] {
        std::fs::write(path.join(f), vec![0xA5u8; 4096]).unwrap();
    }
    let (ob, report) = Outbox::open(&path, OutboxOptions::default()).expect("opens");
    let aside = report
        .moved_aside
        .clone()
        .expect("sled's files were moved aside");
    assert!(
        aside.starts_with(&path),
        "inside the store: {}",
        aside.display()
    );
    assert!(
        aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("index.broken-"),
        "{}",
        aside.display()
    );
    assert!(
        aside.join("db").exists(),
        "the old files are kept for an operator"
    );
    assert!(report.rebuilt.is_some());
    assert_eq!(ids_of(&ob), ids, "every record is still there");
    assert_eq!(
        ob.settings().ts_unit().unwrap(),
        None,
        "settings start again"
    );
    assert!(ob.rebuilt_recently().is_some());
}

/// Find the segment holding the third entry of the store, and the entry's location.
fn a_middle_entry(path: &Path) -> (u64, u64, u64) {
    let dir = path.join(segments::DIR);
    let segs = segments::list(&dir).unwrap();
    let (seg, _) = segs[segs.len() / 2];
    let mut first = None;
    segments::scan(&dir, seg, 0, segments::Bodies::Check, |i| {
        if let segments::Item::Entry { loc, header, .. } = i {
            if header.kind.is_record() && first.is_none() {
                first = Some((seg, loc.off, header.id));
            }
        }
    })
    .unwrap();
    first.unwrap()
}

fn flip(path: &Path, seg: u64, at: u64) {
    let p = segments::path_of(&path.join(segments::DIR), seg);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[usize::try_from(at).unwrap()] ^= 0x5A;
    std::fs::write(&p, bytes).unwrap();
}

#[tokio::test]
async fn a_flipped_byte_in_a_record_of_a_middle_segment_costs_that_record_only() {
    let d = tempfile::tempdir().unwrap();
    let path = store(d.path());
    let ids = several_segments(d.path(), 30).await;
    let (seg, off, id) = a_middle_entry(&path);
    flip(&path, seg, off + segments::HEADER as u64 + 5_000); // in its image
    lose_index(&path);
    let ob = open(d.path(), 2 << 20);
    let got = ids_of(&ob);
    ob.flush().await.unwrap();
    let want: Vec<u64> = ids.iter().copied().filter(|i| *i != id).collect();
    assert_eq!(got, want, "every other record, in order");
    assert_eq!((ob.len(), ob.dead_len()), (29, 1));
    let dead = ob.dead_list().unwrap();
    assert_eq!(dead[0].record.id, id);
    assert!(dead[0].reason.contains("checksum"), "{}", dead[0].reason);
}

#[tokio::test]
async fn a_flipped_byte_in_a_header_in_a_middle_segment_is_skipped_and_the_rest_kept() {
    let d = tempfile::tempdir().unwrap();
    let path = store(d.path());
    let ids = several_segments(d.path(), 30).await;
    let (seg, off, id) = a_middle_entry(&path);
    flip(&path, seg, off + 15); // its accepted-at time: the header no longer checks out
    lose_index(&path);
    let (ob, report) = Outbox::open(&path, OutboxOptions::default()).unwrap();
    let want: Vec<u64> = ids.iter().copied().filter(|i| *i != id).collect();
    assert_eq!(ids_of(&ob), want, "{report:?}");
    assert_eq!(report.damaged_ranges, 1);
    let copied: Vec<_> = std::fs::read_dir(path.join(replay::DAMAGED_DIR))
        .unwrap()
        .collect();
    assert_eq!(copied.len(), 1, "the damaged bytes are kept aside");
}

#[tokio::test]
async fn a_deleted_middle_segment_costs_its_records_only() {
    let d = tempfile::tempdir().unwrap();
    let path = store(d.path());
    let ids = several_segments(d.path(), 30).await;
    let dir = path.join(segments::DIR);
    let (seg, _) = segments::list(&dir).unwrap()[1];
    let mut lost = Vec::new();
    segments::scan(&dir, seg, 0, segments::Bodies::Check, |i| {
        if let segments::Item::Entry { header, .. } = i {
            if header.kind.is_record() {
                lost.push(header.id);
            }
        }
    })
    .unwrap();
    assert!(!lost.is_empty());
    std::fs::remove_file(segments::path_of(&dir, seg)).unwrap();
    lose_index(&path);
    let ob = open(d.path(), 2 << 20);
    let want: Vec<u64> = ids.iter().copied().filter(|i| !lost.contains(i)).collect();
    assert_eq!(ids_of(&ob), want);
    assert_eq!(ob.len(), 30 - lost.len() as u64);
}

#[tokio::test]
async fn a_submit_whose_write_failed_is_refused_and_never_comes_back() {
    let d = tempfile::tempdir().unwrap();
    let path = store(d.path());
    {
        let ob = open(d.path(), 1 << 30);
        ob.submit(rec("a", "A", vec![1; 100])).await.unwrap();
        segments::faults::fail_appends(&path.join(segments::DIR), 1, false);
        let r = ob.submit(rec("b", "B", vec![2; 100])).await;
        assert!(matches!(r, Err(OutboxError::Unavailable(_))), "{r:?}");
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("source keeps the event"));
        assert!(matches!(ob.health(), StoreHealth::Refusing { .. }));
        assert_eq!(plates(&ob), ["A"]);
        // The camera sends it again; the store works again by itself.
        assert!(matches!(
            ob.submit(rec("b", "B", vec![2; 100])).await.unwrap(),
            Submitted::Stored(_)
        ));
        assert_eq!(ob.health(), StoreHealth::Ok);
    }
    lose_index(&path);
    let ob = open(d.path(), 1 << 30);
    assert_eq!(plates(&ob), ["A", "B"], "B once");
}

#[tokio::test]
async fn a_failed_write_that_cannot_be_cut_off_is_aborted_in_the_log() {
    let d = tempfile::tempdir().unwrap();
    let path = store(d.path());
    {
        let ob = open(d.path(), 1 << 30);
        ob.submit(rec("a", "A", vec![1; 100])).await.unwrap();
        // The bytes reach the file, the fsync fails, and so does cutting them off.
        segments::faults::fail_appends(&path.join(segments::DIR), 1, true);
        assert!(ob.submit(rec("b", "B", vec![2; 5_000])).await.is_err());
        // A submit without a key, refused too.
        segments::faults::fail_appends(&path.join(segments::DIR), 1, true);
        assert!(ob.submit(rec("", "N", vec![2; 5_000])).await.is_err());
    }
    for rebuild in [false, true] {
        if rebuild {
            lose_index(&path);
        }
        let (ob, report) = Outbox::open(&path, OutboxOptions::default()).unwrap();
        assert_eq!(
            plates(&ob),
            ["A"],
            "refused submits never come back: {report:?}"
        );
        drop(ob);
    }
    let ob = open(d.path(), 1 << 30);
    assert!(
        matches!(
            ob.submit(rec("b", "B", vec![2])).await.unwrap(),
            Submitted::Stored(_)
        ),
        "the refused key was never accepted"
    );
}

#[tokio::test]
async fn replay_drops_a_record_whose_key_an_earlier_record_of_the_window_has() {
    let d = tempfile::tempdir().unwrap();
    let path = store(d.path());
    one_record_then_closed(d.path()).await;
    // A second copy of key "a" in the log (as a refused submit whose bytes stayed leaves).
    let dir = path.join(segments::DIR);
    let (last, _) = *segments::list(&dir).unwrap().last().unwrap();
    let body = encode_record(&meta("A"), &[1; 10]);
    let copy = segments::encode(
        Kind::Record,
        500,
        Clock::local_ms(),
        dedupe::key_hash(b"a"),
        &body,
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(segments::path_of(&dir, last))
        .unwrap();
    std::io::Write::write_all(&mut f, &copy).unwrap();
    drop(f);
    let (ob, report) = Outbox::open(&path, OutboxOptions::default()).unwrap();
    assert_eq!(report.duplicates_dropped, 1, "{report:?}");
    assert_eq!(ob.len(), 1);
}

#[tokio::test]
async fn the_store_is_private_to_its_user() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let ob = open(d.path(), 1 << 30);
    let id = match ob.submit(rec("a", "A", vec![1; 10])).await.unwrap() {
        Submitted::Stored(id) => id,
        Submitted::Duplicate => panic!(),
    };
    ob.dead_letter(id, "r").await.unwrap();
    let path = store(d.path());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for dir in [path.clone(), path.join(segments::DIR), path.join(dead::DIR)] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    for (seg, _) in segments::list(&path.join(segments::DIR)).unwrap() {
        assert_eq!(
            mode(&segments::path_of(&path.join(segments::DIR), seg)),
            0o600
        );
    }
    for e in std::fs::read_dir(path.join(dead::DIR)).unwrap() {
        assert_eq!(mode(&e.unwrap().path()), 0o600);
    }
}

/// Versions before this one kept pending records of dead-letter retries inline (`r` +
/// id), dead letters inline (`x` + id) and dedupe entries (`d` + key): opening takes them
/// over (into the log, into files, into the window).
#[tokio::test]
async fn a_store_of_the_version_before_is_taken_over() {
    let d = tempfile::tempdir().unwrap();
    {
        let ob = open(d.path(), 1 << 30);
        ob.submit(rec("a", "A", vec![1; 10])).await.unwrap();
        let db = ob.shared().db().unwrap();
        let key = |p: u8, id: u64| {
            let mut k = vec![p];
            k.extend_from_slice(&id.to_be_bytes());
            k
        };
        db.insert(key(b'r', 40), encode_record(&meta("INLINE"), &[4; 20]))
            .unwrap();
        let mut dv = 2u32.to_be_bytes().to_vec();
        dv.extend_from_slice(b"no");
        dv.extend(encode_record(&meta("DEAD"), &[5; 5]));
        db.insert(key(b'x', 30), dv).unwrap();
        let mut old = vec![b'd'];
        old.extend_from_slice(b"cam/old");
        db.insert(&old, &Clock::local_ms().to_be_bytes()).unwrap();
        db.remove(replay::K_FORMAT).unwrap();
        ob.flush().await.unwrap();
    }
    let ob = open(d.path(), 1 << 30);
    assert_eq!(plates(&ob), ["A", "INLINE"], "in id order");
    let dead = ob.dead_list().unwrap();
    assert_eq!(
        (dead.len(), dead[0].reason.as_str(), dead[0].record.id),
        (1, "no", 30)
    );
    assert_eq!(
        ob.submit(rec("cam/old", "O", vec![1])).await.unwrap(),
        Submitted::Duplicate
    );
    drop(ob);
    let ob = open(d.path(), 1 << 30);
    assert_eq!(plates(&ob), ["A", "INLINE"], "taken over once");
    let Submitted::Stored(n) = ob.submit(rec("new", "N", vec![1])).await.unwrap() else {
        panic!()
    };
    assert!(n > 40, "ids go on past the taken-over ones: {n}");
    assert_eq!(ob.dead_len(), 1);
    let inline = ob.shared().db().unwrap().scan_prefix([b'r']).count();
    assert_eq!(inline, 0, "the inline copies are gone from sled");
}

/// Ids and byte counts are u64 on every target: on armv7 (32-bit usize) ids past
/// u32::MAX keep their order and names, and a store over 4 GiB counts correctly.
#[tokio::test]
async fn ids_and_sizes_past_u32_work_on_32_bit_targets() {
    let d = tempfile::tempdir().unwrap();
    let first = u64::from(u32::MAX) - 1;
    let five_gib = 5u64 << 30;
    drop(open(d.path(), 6 << 30));
    {
        // The next id as a long-lived store has it (the writer writes it when it flushes).
        let db = replay::open_index(&store(d.path()), &OutboxOptions::default(), 1 << 20)
            .unwrap()
            .0;
        db.insert(replay::K_NEXT_ID, &first.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    drop(open(d.path(), 6 << 30)); // the log is indexed past segment 1
                                   // An old, sparse 5 GiB segment no record points into.
    let big = segments::path_of(&store(d.path()).join(segments::DIR), 1);
    let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    f.set_len(five_gib).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000))
        .unwrap();
    drop(f);
    let ob = open(d.path(), 6 << 30);
    assert!(ob.bytes() >= five_gib, "{}", ob.bytes());
    let mut ids = vec![];
    for i in 0..3 {
        match ob.submit(rec(&format!("big{i}"), "X", vec![7; 64])).await {
            Ok(Submitted::Stored(id)) => ids.push(id),
            other => panic!("submit {i}: {other:?}"),
        }
    }
    assert_eq!(ids, [first, first + 1, first + 2]);
    assert_eq!(ids[2], 1 << 32, "the third id is past u32::MAX");
    let got = ob.peek(10, u64::MAX).unwrap();
    assert_eq!(
        got.iter().map(|r| r.id).collect::<Vec<_>>(),
        ids,
        "oldest first"
    );
    assert!(
        got[2].meta.img_name.ends_with("_4294967296.jpg"),
        "{}",
        got[2].meta.img_name
    );
    ob.ack(&[ids[2]]).await.unwrap();
    assert_eq!(ob.len(), 2);
    ob.dead_letter(ids[1], "r").await.unwrap();
    assert_eq!(ob.dead_list().unwrap()[0].record.id, u64::from(u32::MAX));
    drop(ob);
    let ob = open(d.path(), 6 << 30);
    assert_eq!((ob.len(), ob.dead_len()), (1, 1));
    let Submitted::Stored(n) = ob.submit(rec("big9", "X", vec![1])).await.unwrap() else {
        panic!()
    };
    assert_eq!(n, (1 << 32) + 1, "ids never go back, even past 2^32");
}

/// sled's files as bytes (what a crash would find of the index).
fn sled_bytes(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = sled_files(path);
    while let Some(f) = dirs.pop() {
        if f.is_dir() {
            dirs.extend(std::fs::read_dir(&f).unwrap().map(|e| e.unwrap().path()));
        } else {
            out.push((f.clone(), std::fs::read(&f).unwrap()));
        }
    }
    out.sort();
    out
}

/// One durable write per event: submits and acks reach the log, and the index only in
/// memory (readers see it there) until the index flush writes sled once.
#[tokio::test]
async fn events_and_acks_leave_sleds_files_alone_until_the_index_is_flushed() {
    let d = tempfile::tempdir().unwrap();
    let path = store(d.path());
    let ob = open(d.path(), 1 << 30);
    ob.flush().await.unwrap();
    let before = sled_bytes(&path);
    let log_before = log_on_disk(d.path());
    for (k, p) in [("a", "A"), ("b", "B"), ("c", "C")] {
        ob.submit(rec(k, p, vec![1; 100])).await.unwrap();
    }
    let first = peeked_ids(&ob, 1);
    ob.ack(&first).await.unwrap();
    assert_eq!(plates(&ob), ["B", "C"], "readers see the writer's changes");
    assert_eq!(ob.len(), 2);
    assert!(log_on_disk(d.path()) > log_before, "the log has them");
    assert!(
        sled_bytes(&path) == before,
        "nothing written to sled's files per event"
    );
    ob.flush().await.unwrap();
    assert!(sled_bytes(&path) != before, "the flush writes the index");
    assert_eq!(plates(&ob), ["B", "C"], "the same after the flush");
    drop(ob);
    let ob = open(d.path(), 1 << 30);
    assert_eq!(plates(&ob), ["B", "C"]);
}

/// More changed chunks than the overlay holds (4 in tests) go to sled early; readers see
/// sled's chunks and the overlay's merged in id order, and a reopen finds all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_overlay_spills_into_sled_and_the_records_stay_in_order() {
    let d = tempfile::tempdir().unwrap();
    let ob = open(d.path(), 1 << 30);
    let answers = submit_from_many(&ob, 8, 40, |t, i| {
        rec(&format!("k{t}-{i}"), &format!("P{t}-{i}"), vec![7; 50])
    })
    .await;
    let mut ids: Vec<u64> = answers
        .into_iter()
        .map(|r| match r.unwrap() {
            Submitted::Stored(id) => id,
            Submitted::Duplicate => panic!("new keys"),
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids_of(&ob), ids, "all 320 (10 chunks), oldest first");
    // Acks scattered over every chunk: some chunks in sled, some in the overlay.
    let acked: Vec<u64> = ids.iter().copied().step_by(3).collect();
    ob.ack(&acked).await.unwrap();
    let left: Vec<u64> = ids.iter().copied().filter(|i| !acked.contains(i)).collect();
    assert_eq!(ids_of(&ob), left);
    assert_eq!(ob.len(), left.len() as u64);
    drop(ob);
    let ob = open(d.path(), 1 << 30);
    assert_eq!(ids_of(&ob), left, "after a reopen");
}
