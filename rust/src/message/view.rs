//! Plugins' header block: reads by name (case-insensitive) over a `HeaderIndex`, and edits
//! that rewrite the bytes at once. Invariant: the index describes the current bytes, and an
//! edit writes exactly one well-formed field (ftext name, value folded only as CRLF + WSP).
use super::headers::{Edit, HeaderIndex};

/// Why an edit was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EditError {
    ReadOnly,
    Name(&'static str),
    Value(&'static str),
}

impl std::fmt::Display for EditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EditError::ReadOnly => "read-only header view",
            EditError::Name(m) | EditError::Value(m) => m,
        })
    }
}

impl std::error::Error for EditError {}

/// A field name we may write: RFC 5322 ftext (printable ASCII but ':'), at least one octet.
pub fn check_name(name: &[u8]) -> Result<(), EditError> {
    if name.is_empty() {
        return Err(EditError::Name("header name is empty"));
    }
    if name.contains(&b':') {
        return Err(EditError::Name("header name contains ':'"));
    }
    if !name.iter().all(|b| (33..=126).contains(b)) {
        return Err(EditError::Name("header name contains a space, a control character or a non-ASCII octet"));
    }
    Ok(())
}

/// A field value we may write: no NUL, and CR or LF only as folding (CRLF then SP or HTAB),
/// so that what we write is one field, whatever reads it.
pub fn check_value(v: &[u8]) -> Result<(), EditError> {
    if v.contains(&0) {
        return Err(EditError::Value("header value contains NUL"));
    }
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'\r' if v.get(i + 1) == Some(&b'\n') && matches!(v.get(i + 2), Some(b' ' | b'\t')) => i += 3,
            b'\r' | b'\n' => {
                return Err(EditError::Value(
                    "header value contains a bare CR or LF (only CRLF followed by a space or tab, folding, is allowed)",
                ))
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// A value as plugins read it: each line break (CRLF or LF) followed by SP/HTAB removed,
/// ASCII whitespace trimmed at both ends. Bytes: decoding is the caller's (lossy UTF-8).
pub fn unfold(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let brk = match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => 2,
            b'\n' => 1,
            _ => 0,
        };
        if brk > 0 && matches!(raw.get(i + brk), Some(b' ' | b'\t')) {
            i += brk;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    out.trim_ascii().to_vec()
}

/// The header block of one message, read and edited in place.
#[derive(Clone, Debug)]
pub struct HeaderView {
    data: Vec<u8>,
    ix: HeaderIndex,
    changed: bool,
    readonly: bool,
}

impl HeaderView {
    /// `block`: fields each ending in CRLF or LF, without the empty line that ends the
    /// block. Bytes after the first line that is not a field are kept after the fields
    /// (new fields go before them), never read as fields.
    pub fn new(block: Vec<u8>, readonly: bool) -> HeaderView {
        let ix = HeaderIndex::parse(&block);
        HeaderView { data: block, ix, changed: false, readonly }
    }

    pub fn block(&self) -> &[u8] {
        &self.data
    }
    pub fn changed(&self) -> bool {
        self.changed
    }
    pub fn readonly(&self) -> bool {
        self.readonly
    }
    pub fn len(&self) -> usize {
        self.ix.fields.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ix.fields.is_empty()
    }

    fn find<'a>(&'a self, name: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.ix.find(&self.data, name)
    }
    pub fn contains(&self, name: &str) -> bool {
        self.find(name).next().is_some()
    }
    /// Every field's name as written, in order.
    pub fn names(&self) -> Vec<&[u8]> {
        (0..self.len()).map(|i| self.ix.name(&self.data, i)).collect()
    }
    /// Every field as (name as written, raw value), in order.
    pub fn fields(&self) -> Vec<(&[u8], &[u8])> {
        (0..self.len()).map(|i| (self.ix.name(&self.data, i), self.ix.value(&self.data, i))).collect()
    }
    /// Raw values (after the ':', folding kept, final line break not) of the fields named `name`.
    pub fn get_all_raw(&self, name: &str) -> Vec<&[u8]> {
        self.find(name).map(|i| self.ix.value(&self.data, i)).collect()
    }
    pub fn get_raw(&self, name: &str) -> Option<&[u8]> {
        self.find(name).next().map(|i| self.ix.value(&self.data, i))
    }

    fn edit(&self) -> Result<(), EditError> {
        if self.readonly {
            return Err(EditError::ReadOnly);
        }
        Ok(())
    }

    fn field(name: &str, value: &[u8]) -> Result<Vec<u8>, EditError> {
        check_name(name.as_bytes())?;
        check_value(value)?;
        let mut f = Vec::with_capacity(name.len() + value.len() + 4);
        f.extend_from_slice(name.as_bytes());
        f.extend_from_slice(b": ");
        f.extend_from_slice(value);
        f.extend_from_slice(b"\r\n");
        Ok(f)
    }

    fn set(&mut self, data: Vec<u8>) {
        self.ix = HeaderIndex::parse(&data);
        self.data = data;
        self.changed = true;
    }

    /// Append `name: value` after the last field.
    pub fn add(&mut self, name: &str, value: &[u8]) -> Result<(), EditError> {
        self.edit()?;
        let f = Self::field(name, value)?;
        let at = self.ix.header_end;
        let mut data = Vec::with_capacity(self.data.len() + f.len() + 2);
        data.extend_from_slice(&self.data[..at]);
        // A last field without its line break (the block's very end) gets one first,
        // or the new field would run into its value.
        if at > 0 && data[at - 1] != b'\n' {
            data.extend_from_slice(if data[at - 1] == b'\r' { b"\n" } else { b"\r\n" });
        }
        data.extend_from_slice(&f);
        data.extend_from_slice(&self.data[at..]);
        self.set(data);
        Ok(())
    }

    /// Insert `name: value` before the first field.
    pub fn prepend(&mut self, name: &str, value: &[u8]) -> Result<(), EditError> {
        self.edit()?;
        let mut data = Self::field(name, value)?;
        data.extend_from_slice(&self.data);
        self.set(data);
        Ok(())
    }

    /// Remove every field named `name`; how many there were.
    pub fn remove(&mut self, name: &str) -> Result<usize, EditError> {
        self.edit()?;
        let edits: Vec<Edit> = self.find(name).map(Edit::Remove).collect();
        if !edits.is_empty() {
            self.set(self.ix.apply(&self.data, &edits));
        }
        Ok(edits.len())
    }

    /// Remove the `n`-th field named `name` (0 = topmost): false when there are not n + 1
    /// (a forged Authentication-Results among several is removed alone).
    pub fn remove_nth(&mut self, name: &str, n: usize) -> Result<bool, EditError> {
        self.edit()?;
        let Some(i) = self.find(name).nth(n) else { return Ok(false) };
        self.set(self.ix.apply(&self.data, &[Edit::Remove(i)]));
        Ok(true)
    }

    /// Replace the value of the first field named `name` (its name kept as written): true;
    /// with none, add the field at the end: false.
    pub fn replace(&mut self, name: &str, value: &[u8]) -> Result<bool, EditError> {
        self.edit()?;
        check_name(name.as_bytes())?;
        check_value(value)?;
        let Some(i) = self.find(name).next() else {
            self.add(name, value)?;
            return Ok(false);
        };
        let mut v = Vec::with_capacity(value.len() + 1);
        v.push(b' ');
        v.extend_from_slice(value);
        self.set(self.ix.apply(&self.data, &[Edit::Replace(i, v)]));
        Ok(true)
    }
}

/// For the fuzz target (fuzz/fuzz_targets/headers.rs) and the corpus replay: input =
/// block, 0xFF, then edits, each `op | name_len | name | value_len | value`. Asserts no
/// panic, and after every edit that the bytes re-parse to the fields the view reports and
/// the edit did what it says.
pub mod harness {
    use super::*;

    pub fn check(input: &[u8]) {
        let (block, mut ops) = match input.iter().position(|&b| b == 0xFF) {
            Some(k) => (&input[..k], &input[k + 1..]),
            None => (input, &[][..]),
        };
        let mut v = HeaderView::new(block.to_vec(), false);
        assert!(v.block() == block);
        consistent(&v);
        // A tail that opens with WSP is no field; a field put in front of it takes it as
        // its continuation, so only there the values below may differ.
        let absorbs = v.is_empty() && matches!(block.first(), Some(b' ' | b'\t'));
        let mut take = |n: usize| {
            let n = n.min(ops.len());
            let (a, b) = ops.split_at(n);
            ops = b;
            a
        };
        while let Some(&op) = take(1).first() {
            let nl = take(1).first().copied().unwrap_or(0) as usize;
            let name = String::from_utf8_lossy(take(nl)).into_owned();
            let vl = take(1).first().copied().unwrap_or(0) as usize;
            let value = take(vl).to_vec();
            let before = v.get_all_raw(&name).len();
            let valid = check_name(name.as_bytes()).is_ok() && check_value(&value).is_ok();
            let mut spaced = b" ".to_vec();
            spaced.extend_from_slice(&value);
            match op % 4 {
                0 => {
                    let r = v.add(&name, &value);
                    assert_eq!(r.is_ok(), valid);
                    if valid && !absorbs {
                        assert_eq!(v.get_all_raw(&name).last().copied(), Some(&spaced[..]));
                    }
                }
                1 => {
                    let r = v.prepend(&name, &value);
                    assert_eq!(r.is_ok(), valid);
                    if valid && !absorbs {
                        assert_eq!(v.get_raw(&name), Some(&spaced[..]));
                    }
                }
                2 => {
                    assert_eq!(v.remove(&name).unwrap(), before);
                    assert!(v.get_raw(&name).is_none());
                }
                _ => match v.replace(&name, &value) {
                    Ok(found) => {
                        assert!(valid);
                        assert_eq!(found, before > 0);
                        if !absorbs {
                            let all = v.get_all_raw(&name);
                            assert_eq!(all.len(), before.max(1));
                            assert_eq!(if found { all[0] } else { all[all.len() - 1] }, &spaced[..]);
                        }
                    }
                    Err(_) => assert!(!valid),
                },
            }
            consistent(&v);
        }
    }

    fn consistent(v: &HeaderView) {
        let again = HeaderIndex::parse(v.block());
        assert_eq!(again.fields.len(), v.len());
        for (i, (n, _)) in v.fields().into_iter().enumerate() {
            assert!(again.name(v.block(), i) == n);
            let _ = unfold(again.value(v.block(), i));
        }
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
