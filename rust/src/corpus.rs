//! Tests only: the files of fuzz/corpus/NAME, so that `cargo test` replays every fuzz target's
//! corpus. Invariant: a corpus is never empty (an empty or missing one fails the test).

pub(crate) fn files(name: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(name);
    let files: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
}
