//! Local-folder storage through object_store: listing, keys with any Unicode, reads and writes.

use bytes::Bytes;
use spotbatch_store::{GetError, Prefix, StorageError};

#[tokio::test]
async fn unicode_keys_list_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("in put ü");
    let names = [
        "a.png",
        "ünïcødé dir/数字 1.png",
        "sub/x%41y.png",
        "sub/deep/#hash?.png",
    ];
    for n in names {
        let p = base.join(n);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, n.as_bytes()).unwrap();
    }
    let url = url::Url::from_directory_path(&base).unwrap();
    let prefix = Prefix::open(&url).unwrap();
    let listed = prefix.list().await.unwrap();
    let mut keys: Vec<&str> = listed.iter().map(|l| l.key.as_str()).collect();
    keys.sort();
    let mut want = names.to_vec();
    want.sort();
    assert_eq!(keys, want);
    for n in names {
        let bytes = prefix
            .get(n, 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(&bytes[..], n.as_bytes());
    }
    assert!(matches!(
        prefix.get("a.png", 2).await,
        Err(GetError::TooLarge { size: 5, max: 2 })
    ));
    assert!(matches!(
        prefix.get("nope.png", 10).await,
        Err(GetError::Storage(StorageError::NotFound { .. }))
    ));
}

#[tokio::test]
async fn put_creates_folders_and_replaces_whole() {
    let dir = tempfile::tempdir().unwrap();
    let url = url::Url::from_directory_path(dir.path().join("out ü/job")).unwrap();
    let prefix = Prefix::open(&url).unwrap();
    prefix
        .put("_done/s1.json", Bytes::from_static(b"one"))
        .await
        .unwrap();
    prefix
        .put("_done/s1.json", Bytes::from_static(b"two"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("out ü/job/_done/s1.json")).unwrap(),
        b"two"
    );
    assert!(prefix.exists("_done/s1.json").await.unwrap());
    assert!(!prefix.exists("_done/s2.json").await.unwrap());
    assert_eq!(prefix.get_opt("_done/s2.json").await.unwrap(), None);
}
