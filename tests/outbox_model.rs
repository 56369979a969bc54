//! A model test of the outbox: random sequences of submit / upload success / 1004 /
//! reject / reopen, checked after every step against a simple in-memory model.

use std::collections::HashSet;
use std::path::Path;

use lotlink::outbox::{ImgName, NewRecord, Outbox, OutboxOptions, RecordMeta, Submitted};
use proptest::prelude::*;

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
            let mut pending: Vec<u8> = Vec::new();
            let mut dead: Vec<u8> = Vec::new();
            let mut seen: HashSet<u8> = HashSet::new();
            for op in ops {
                let o = ob.as_ref().unwrap();
                match op {
                    Op::Submit(k) => {
                        let got = o.submit(rec(k)).await.unwrap();
                        if seen.insert(k) {
                            prop_assert!(matches!(got, Submitted::Stored(_)));
                            pending.push(k);
                        } else {
                            prop_assert_eq!(got, Submitted::Duplicate);
                        }
                    }
                    Op::UploadOk(n) => {
                        let batch = o.peek(n, u64::MAX).unwrap();
                        let ids: Vec<u64> = batch.iter().map(|r| r.id).collect();
                        o.ack(&ids).await.unwrap();
                        pending.drain(..n.min(pending.len()));
                    }
                    Op::Exists => {
                        if let Some(r) = o.peek(1, u64::MAX).unwrap().first() {
                            o.ack(&[r.id]).await.unwrap();
                            pending.remove(0);
                        }
                    }
                    Op::Reject => {
                        if let Some(r) = o.peek(1, u64::MAX).unwrap().first() {
                            o.dead_letter(r.id, "1502 bad").await.unwrap();
                            dead.push(pending.remove(0));
                        }
                    }
                    Op::Reopen => {
                        drop(ob.take());
                        ob = Some(open(&path));
                    }
                }
                let o = ob.as_ref().unwrap();
                let all = o.peek(usize::MAX, u64::MAX).unwrap();
                let got: Vec<u8> = all.iter().map(|r| r.image[0]).collect();
                prop_assert_eq!(&got, &pending);
                for r in &all {
                    prop_assert_eq!(r.image.len(), usize::from(r.image[0]) * 10 + 1, "record intact");
                }
                prop_assert_eq!(o.len(), pending.len() as u64);
                prop_assert_eq!(o.dead_len(), dead.len() as u64);
                let d: Vec<u8> = o.dead_list().unwrap().iter().map(|r| r.record.image[0]).collect();
                prop_assert_eq!(&d, &dead);
                let expect_bytes: u64 = all.iter().map(|r| lotlink::outbox::encode_record(&r.meta, &r.image).len() as u64).sum::<u64>()
                    + o.dead_list().unwrap().iter().map(|r| 4 + r.reason.len() as u64 + lotlink::outbox::encode_record(&r.record.meta, &r.record.image).len() as u64).sum::<u64>();
                prop_assert_eq!(o.bytes(), expect_bytes, "byte counter matches the stored values");
            }
            Ok(())
        })?;
    }
}
