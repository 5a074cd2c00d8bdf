//! Malformed network input is an error value, never a panic, and never
//! corrupts a store.

mod common;
use common::*;
use litemesh_storage::{ChangeBatch, decode_batch, encode_batch};
use proptest::prelude::*;

fn sample() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let b = open(&dir, "b");
    a.execute_batch(
        "INSERT INTO items VALUES ('x', 1, 'one'); INSERT INTO tags VALUES ('t', 1, x'00ff'); \
         UPDATE items SET a = 2; DELETE FROM tags;",
    )
    .unwrap();
    let bs = batches(&a, &b, 64 * 1024);
    let bytes = encode_batch(&bs[0], 1 << 20).unwrap();
    (dir, bytes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_batch(&bytes, 1 << 20);
        let mut with_version = vec![1u8];
        with_version.extend(&bytes);
        let _ = decode_batch(&with_version, 1 << 20);
    }

    #[test]
    fn mutated_batches_never_panic_nor_corrupt(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let (dir, mut bytes) = sample();
        for (i, v) in flips {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if let Ok(batch) = decode_batch(&bytes, 1 << 20) {
            // A batch that decodes may still be nonsense for this store: it is
            // applied or refused as a whole, and the store stays usable.
            let mut c = open(&dir, "c");
            let before = dump(&c, "items");
            match c.apply(&batch) {
                Ok(_) => {}
                Err(_) => prop_assert_eq!(dump(&c, "items"), before),
            }
            c.execute_batch("INSERT INTO items VALUES ('after', 1, 'ok')").unwrap();
        }
    }
}

#[test]
fn oversized_and_hostile_lengths_are_rejected() {
    // A MessagePack array header announcing 2^32-1 elements with no body.
    let hostile = [1u8, 0xdd, 0xff, 0xff, 0xff, 0xff];
    assert!(decode_batch(&hostile, 1 << 20).is_err());
    let big = vec![1u8; (1 << 20) + 1];
    assert!(decode_batch(&big, 1 << 20).is_err());
    let empty = encode_batch(&ChangeBatch::default(), 1 << 20).unwrap();
    assert_eq!(
        decode_batch(&empty, 1 << 20).unwrap(),
        ChangeBatch::default()
    );
}
