//! A model test of the outbox: random sequences of submit / upload success / 1004 /
//! reject / reopen, run through the [`RecordStore`] trait on the sled outbox and on a
//! simple in-memory store side by side, and compared after every step.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use lotlink::testing::outbox::{
    ImgName, NewRecord, Outbox, OutboxError, OutboxOptions, RecordMeta, RecordStore, StoredRecord,
    Submitted,
};
use proptest::prelude::*;

/// The model: a FIFO with a dedupe set and a dead-letter list, in memory.
#[derive(Default)]
struct MemStore(Mutex<Mem>);

#[derive(Default)]
struct Mem {
    next_id: u64,
    pending: Vec<StoredRecord>,
    dead: Vec<StoredRecord>,
    seen: HashSet<String>,
}

impl MemStore {
    fn mem(&self) -> std::sync::MutexGuard<'_, Mem> {
        self.0.lock().unwrap()
    }
}

impl RecordStore for MemStore {
    async fn append(&self, mut rec: NewRecord) -> Result<Submitted, OutboxError> {
        let mut m = self.mem();
        if !m.seen.insert(rec.source_key.clone()) {
            return Ok(Submitted::Duplicate);
        }
        m.next_id += 1;
        let id = m.next_id;
        if let ImgName::Given(n) = &rec.img_name {
            rec.meta.img_name.clone_from(n);
        }
        m.pending.push(StoredRecord {
            id,
            meta: rec.meta,
            image: rec.image,
        });
        Ok(Submitted::Stored(id))
    }
    fn peek(&self, max_records: usize, _max_bytes: u64) -> Result<Vec<StoredRecord>, OutboxError> {
        Ok(self
            .mem()
            .pending
            .iter()
            .take(max_records)
            .cloned()
            .collect())
    }
    async fn ack(&self, ids: &[u64]) -> Result<(), OutboxError> {
        self.mem().pending.retain(|r| !ids.contains(&r.id));
        Ok(())
    }
    async fn dead_letter(&self, id: u64, _reason: &str) -> Result<(), OutboxError> {
        let mut m = self.mem();
        if let Some(i) = m.pending.iter().position(|r| r.id == id) {
            let r = m.pending.remove(i);
            m.dead.push(r);
        }
        Ok(())
    }
    fn len(&self) -> u64 {
        self.mem().pending.len() as u64
    }
}

/// Apply one operation (all but `Reopen`) to a store.
async fn apply<S: RecordStore>(s: &S, op: &Op) -> Option<Submitted> {
    match op {
        Op::Submit(k) => return Some(s.append(rec(*k)).await.unwrap()),
        Op::UploadOk(n) => {
            let ids: Vec<u64> = s.peek(*n, u64::MAX).unwrap().iter().map(|r| r.id).collect();
            s.ack(&ids).await.unwrap();
        }
        Op::Exists => {
            if let Some(r) = s.peek(1, u64::MAX).unwrap().first() {
                s.ack(&[r.id]).await.unwrap();
            }
        }
        Op::Reject => {
            if let Some(r) = s.peek(1, u64::MAX).unwrap().first() {
                s.dead_letter(r.id, "1502 bad").await.unwrap();
            }
        }
        Op::Reopen => {}
    }
    None
}

#[derive(Debug, Clone)]
enum Op {
    /// Submit an event with this source key (small range: duplicates happen).
    Submit(u8),
    /// The platform accepted the oldest `n` records.
    UploadOk(usize),
    /// The platform answered 1004 for the oldest record alone: delivered.
    Exists,
    /// The platform rejected the oldest record (1501/1502): dead letter.
    Reject,
    /// Restart the gateway.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..24).prop_map(Op::Submit),
        2 => (1usize..5).prop_map(Op::UploadOk),
        1 => Just(Op::Exists),
        1 => Just(Op::Reject),
        1 => Just(Op::Reopen),
    ]
}

fn rec(k: u8) -> NewRecord {
    NewRecord {
        source_key: format!("key{k}"),
        meta: RecordMeta {
            car_no: Some(format!("P{k}")),
            in_out_type: "out".into(),
            in_out_time: "2026-11-28 08:00:00".into(),
            img_name: String::new(),
            node_name: "出口1".into(),
            car_color: None,
            car_style: "1".into(),
            car_brand: None,
            remark: None,
            submitted_ms: 0,
            degraded: false,
        },
        img_name: ImgName::Given(format!("img{k}.jpg")),
        image: vec![k; usize::from(k) * 10 + 1],
    }
}

fn open(p: &Path) -> Outbox {
    Outbox::open(p, OutboxOptions::default()).expect("open").0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn the_outbox_behaves_like_a_fifo_with_dedupe_and_dead_letters(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ob");
            let mut ob = Some(open(&path));
            let model = MemStore::default();
            for op in ops {
                if matches!(op, Op::Reopen) {
                    drop(ob.take());
                    ob = Some(open(&path));
                }
                let got = apply(ob.as_ref().unwrap(), &op).await;
                let want = apply(&model, &op).await;
                prop_assert_eq!(got, want, "same answer to {:?}", op);
                let o = ob.as_ref().unwrap();
                let all = o.peek(usize::MAX, u64::MAX).unwrap();
                let expected = model.peek(usize::MAX, u64::MAX).unwrap();
                prop_assert_eq!(&all, &expected, "the same records, in the same order, intact");
                prop_assert_eq!(RecordStore::len(o), model.len());
                let d: Vec<u64> = o.dead_list().unwrap().iter().map(|r| r.record.id).collect();
                let want_dead: Vec<u64> = model.mem().dead.iter().map(|r| r.id).collect();
                prop_assert_eq!(d, want_dead);
                // What the quota counts is what is on disk: the log's segment files and the
                // dead letters (reason and record inline).
                let log: u64 = std::fs::read_dir(path.join("segments")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
                let expect_bytes: u64 = log
                    + o.dead_list().unwrap().iter().map(|r| 4 + r.reason.len() as u64 + lotlink::testing::outbox::encode_record(&r.record.meta, &r.record.image).len() as u64).sum::<u64>();
                prop_assert_eq!(o.bytes(), expect_bytes, "byte counter matches the files and values stored");
            }
            Ok(())
        })?;
    }
}
