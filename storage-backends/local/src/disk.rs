//! The on-disk format of the local store.
//!
//! ```text
//! {root}/objects/{h[0..2]}/{h}   one file per object, h = hex(sha256(key))
//! {root}/tmp/{random}.part       uploads in progress
//! ```
//!
//! An object file is `"SPWLOBJ1"`, a little-endian `u32` header length, a JSON header
//! (`key`, `content_type`, `content_encoding`, `etag`) and then the object's bytes. Keeping the
//! header in the same file as the bytes means one `rename` replaces both together, so a reader
//! never sees the headers of one version with the bytes of another; a reader that opened the
//! previous version keeps reading that version through its file descriptor.
//!
//! File names are hashes rather than the key's segments, so no key, however it is spelled,
//! becomes a path component: nothing a client sends can name a file outside `objects/`, keys
//! longer than a file name are fine, and key `a` cannot collide with a directory for `a/b`.

use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spillway_storage::{ObjectKey, ObjectMeta, PutOptions, PutPayload, StorageError};
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufWriter};

const MAGIC: [u8; 8] = *b"SPWLOBJ1";
/// Magic plus the header length.
const PREAMBLE_LEN: u64 = 12;
/// Headers are a few hundred bytes; the bound stops a corrupt file from causing a huge read.
const MAX_HEADER_LEN: u32 = 64 * 1024;
/// Longest `Content-Type` or `Content-Encoding` stored.
pub(crate) const MAX_HEADER_VALUE_LEN: usize = 1024;
/// Batches small stream chunks into fewer blocking writes.
const WRITE_BUFFER: usize = 256 * 1024;
const TEMP_SUFFIX: &str = ".part";

/// A temporary upload file untouched this long belongs to a crashed process.
pub(crate) const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_encoding: Option<String>,
    etag: String,
}

/// A failed filesystem call: out of space, quota or file size limit become
/// [`StorageError::Full`] naming the cause (so a full disk does not read as a generic i/o
/// error), the rest [`StorageError::Io`].
fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> StorageError {
    move |source| StorageError::from_io(op, source)
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Io {
        op: "read object header",
        source: io::Error::new(io::ErrorKind::InvalidData, what.to_string()),
    }
}

/// Where objects and temporary files live under the store's root.
#[derive(Debug)]
pub(crate) struct Layout {
    objects: PathBuf,
    tmp: PathBuf,
}

/// An object opened for reading: the file is positioned nowhere in particular.
pub(crate) struct OpenObject {
    pub(crate) file: File,
    pub(crate) meta: ObjectMeta,
    data_offset: u64,
}

impl OpenObject {
    /// The file positioned at `start` of the object's bytes, limited to `len` bytes.
    pub(crate) async fn into_reader(
        mut self,
        start: u64,
        len: u64,
    ) -> Result<tokio::io::Take<File>, StorageError> {
        let pos = self
            .data_offset
            .checked_add(start)
            .ok_or_else(|| corrupt("offset overflow"))?;
        self.file
            .seek(SeekFrom::Start(pos))
            .await
            .map_err(io_err("seek object"))?;
        Ok(self.file.take(len))
    }
}

/// Removes a temporary file unless disarmed, so that every way out of an upload (error, panic,
/// the future being dropped when a client disconnects) leaves nothing behind.
struct TempGuard {
    path: Option<PathBuf>,
}

impl TempGuard {
    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // Synchronous because Drop cannot await; unlinking one file is quick.
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(error = %e, "could not remove temporary upload file");
                }
            }
        }
    }
}

impl Layout {
    /// Creates the directories under `root` and removes temporary files left by a crash.
    /// Only files untouched for [`STALE_TEMP_AGE`] go: replicas sharing one volume must not
    /// delete each other's uploads in progress.
    pub(crate) fn create(root: &Path) -> Result<Self, StorageError> {
        let layout = Layout {
            objects: root.join("objects"),
            tmp: root.join("tmp"),
        };
        std::fs::create_dir_all(&layout.objects).map_err(io_err("create objects directory"))?;
        std::fs::create_dir_all(&layout.tmp).map_err(io_err("create temp directory"))?;
        let mut removed = 0usize;
        for entry in std::fs::read_dir(&layout.tmp).map_err(io_err("list temp directory"))? {
            let entry = entry.map_err(io_err("list temp directory"))?;
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= STALE_TEMP_AGE);
            if is_file && stale && entry.file_name().to_string_lossy().ends_with(TEMP_SUFFIX) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StorageError::Io {
                            op: "remove stale temp file",
                            source: e,
                        })
                    }
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed stale temporary upload files");
        }
        Ok(layout)
    }

    fn object_path(&self, key: &ObjectKey) -> PathBuf {
        let hash = hex::encode(Sha256::digest(key.as_str().as_bytes()));
        self.objects.join(&hash[..2]).join(&hash)
    }

    fn new_temp_path(&self) -> PathBuf {
        let id: u128 = rand::random();
        self.tmp.join(format!("{id:032x}{TEMP_SUFFIX}"))
    }

    /// Writes an object atomically: into a temp file, then renamed over the final path.
    pub(crate) async fn write(
        &self,
        key: &ObjectKey,
        payload: PutPayload,
        opts: PutOptions,
        limit: u64,
    ) -> Result<ObjectMeta, StorageError> {
        if let Some(size) = payload.size_hint() {
            if size > limit {
                return Err(StorageError::TooLarge { size, limit });
            }
        }
        let etag_id: u128 = rand::random();
        let header = Header {
            key: key.as_str().to_string(),
            content_type: opts.content_type,
            content_encoding: opts.content_encoding,
            etag: format!("\"{etag_id:032x}\""),
        };
        let header_json = serde_json::to_vec(&header)
            .map_err(|e| StorageError::Backend(format!("cannot encode object header: {e}")))?;
        let header_len = u32::try_from(header_json.len())
            .ok()
            .filter(|&n| n <= MAX_HEADER_LEN)
            .ok_or_else(|| StorageError::Backend("object header too large".to_string()))?;

        let temp_path = self.new_temp_path();
        // The guard exists before the file, and the file is created synchronously: a
        // tokio::fs open runs on a blocking thread and could create the file after a
        // cancelled upload's guard had already run.
        let mut guard = TempGuard {
            path: Some(temp_path.clone()),
        };
        let std_file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(io_err("create temp file"))?;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, File::from_std(std_file));
        out.write_all(&MAGIC)
            .await
            .map_err(io_err("write temp file"))?;
        out.write_all(&header_len.to_le_bytes())
            .await
            .map_err(io_err("write temp file"))?;
        out.write_all(&header_json)
            .await
            .map_err(io_err("write temp file"))?;

        let mut size = 0u64;
        match payload {
            PutPayload::Bytes(bytes) => {
                size = bytes.len() as u64;
                out.write_all(&bytes)
                    .await
                    .map_err(io_err("write temp file"))?;
            }
            PutPayload::Stream { mut stream, .. } => {
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| StorageError::UploadAborted {
                        reason: e.to_string(),
                    })?;
                    size = size.saturating_add(chunk.len() as u64);
                    if size > limit {
                        return Err(StorageError::TooLarge { size, limit });
                    }
                    out.write_all(&chunk)
                        .await
                        .map_err(io_err("write temp file"))?;
                }
            }
        }
        // tokio's File completes writes in the background; flush waits for them, so the rename
        // below publishes a complete file. No fsync: objects are short-lived derived data and a
        // crash loses at most uploads whose URLs were never handed out durably.
        out.flush().await.map_err(io_err("write temp file"))?;
        drop(out);

        let dest = self.object_path(key);
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(io_err("create object directory"))?;
        }
        tokio::fs::rename(&temp_path, &dest)
            .await
            .map_err(io_err("publish object"))?;
        guard.disarm();
        Ok(ObjectMeta {
            key: key.clone(),
            size,
            content_type: header.content_type,
            content_encoding: header.content_encoding,
            etag: Some(header.etag),
        })
    }

    /// Opens an object and reads its header.
    pub(crate) async fn open(&self, key: &ObjectKey) -> Result<OpenObject, StorageError> {
        let not_found = || StorageError::NotFound {
            key: key.as_str().to_string(),
        };
        let mut file = match File::open(self.object_path(key)).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => {
                return Err(StorageError::Io {
                    op: "open object",
                    source: e,
                })
            }
        };
        // Size from the open descriptor, not the path, so it describes the version being read.
        let file_len = file.metadata().await.map_err(io_err("stat object"))?.len();
        let mut preamble = [0u8; PREAMBLE_LEN as usize];
        file.read_exact(&mut preamble)
            .await
            .map_err(|_| corrupt("truncated object file"))?;
        if preamble[..8] != MAGIC {
            return Err(corrupt("bad object file magic"));
        }
        let header_len = u32::from_le_bytes([preamble[8], preamble[9], preamble[10], preamble[11]]);
        let data_offset = PREAMBLE_LEN + u64::from(header_len);
        if header_len > MAX_HEADER_LEN || data_offset > file_len {
            return Err(corrupt("bad object header length"));
        }
        let mut header_json = vec![0u8; header_len as usize];
        file.read_exact(&mut header_json)
            .await
            .map_err(|_| corrupt("truncated object header"))?;
        let header: Header =
            serde_json::from_slice(&header_json).map_err(|_| corrupt("bad object header"))?;
        if header.key != key.as_str() {
            // Only a sha256 collision or a hand-edited file gets here.
            return Err(not_found());
        }
        Ok(OpenObject {
            file,
            meta: ObjectMeta {
                key: key.clone(),
                size: file_len - data_offset,
                content_type: header.content_type,
                content_encoding: header.content_encoding,
                etag: Some(header.etag),
            },
            data_offset,
        })
    }

    /// Deletes an object; a missing object is not an error.
    pub(crate) async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.object_path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::Io {
                op: "delete object",
                source: e,
            }),
        }
    }

    /// Deletes objects whose file was last written at least `age` ago; returns how many.
    ///
    /// Age is the file's modification time, i.e. when its upload finished writing. Temporary
    /// files are left alone: live uploads own them, and crashed ones are removed at startup.
    pub(crate) async fn sweep(&self, age: Duration) -> Result<usize, StorageError> {
        let now = SystemTime::now();
        let mut removed = 0usize;
        let mut dirs = tokio::fs::read_dir(&self.objects)
            .await
            .map_err(io_err("list objects"))?;
        while let Some(dir) = dirs.next_entry().await.map_err(io_err("list objects"))? {
            let is_dir = dir.file_type().await.map(|t| t.is_dir()).unwrap_or(false);
            if !is_dir {
                continue;
            }
            let mut files = match tokio::fs::read_dir(dir.path()).await {
                Ok(files) => files,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StorageError::Io {
                        op: "list objects",
                        source: e,
                    })
                }
            };
            while let Some(file) = files.next_entry().await.map_err(io_err("list objects"))? {
                // DirEntry::metadata does not follow symlinks, and only regular files are ours.
                let meta = match file.metadata().await {
                    Ok(m) if m.is_file() => m,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(StorageError::Io {
                            op: "stat object",
                            source: e,
                        })
                    }
                };
                let modified = meta.modified().map_err(io_err("stat object"))?;
                // A modification time in the future (clock step) counts as brand new.
                let elapsed = now.duration_since(modified).unwrap_or(Duration::ZERO);
                if elapsed < age {
                    continue;
                }
                match tokio::fs::remove_file(file.path()).await {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StorageError::Io {
                            op: "delete object",
                            source: e,
                        })
                    }
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::stream;

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path());
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn file_starts_with_magic_and_json_header() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let key = ObjectKey::parse("p/k1").unwrap();
        let opts = PutOptions {
            content_type: Some("text/plain".into()),
            content_encoding: Some("zstd".into()),
        };
        let meta = layout
            .write(&key, Bytes::from_static(b"payload").into(), opts, 100)
            .await
            .unwrap();
        let raw = std::fs::read(layout.object_path(&key)).unwrap();
        assert_eq!(&raw[..8], b"SPWLOBJ1");
        let hlen = u32::from_le_bytes(raw[8..12].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&raw[12..12 + hlen]).unwrap();
        assert_eq!(header["key"], "p/k1");
        assert_eq!(header["content_type"], "text/plain");
        assert_eq!(header["content_encoding"], "zstd");
        assert_eq!(header["etag"].as_str(), meta.etag.as_deref());
        assert_eq!(&raw[12 + hlen..], b"payload");
        // The path is derived from the hash only.
        let name = layout.object_path(&key);
        assert!(name.starts_with(dir.path().join("objects")));
        assert_eq!(name.file_name().unwrap().len(), 64);
    }

    #[tokio::test]
    async fn stale_temp_files_are_removed_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let stale = layout.new_temp_path();
        std::fs::write(&stale, b"half an upload").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - 2 * STALE_TEMP_AGE)
            .unwrap();
        // A fresh one may be another replica's upload in progress on a shared volume.
        let live = layout.new_temp_path();
        std::fs::write(&live, b"being written").unwrap();
        let unrelated = dir.path().join("tmp").join("keep.txt");
        std::fs::write(&unrelated, b"not ours").unwrap();
        drop(layout);
        let _layout = Layout::create(dir.path()).unwrap();
        assert!(!stale.exists());
        assert!(live.exists());
        assert!(unrelated.exists());
    }

    #[tokio::test]
    async fn cancelled_upload_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let key = ObjectKey::parse("k").unwrap();
        let (tx, rx) = futures::channel::mpsc::channel::<io::Result<Bytes>>(1);
        let payload = PutPayload::Stream {
            stream: rx.boxed(),
            size_hint: None,
        };
        let mut tx = tx;
        use futures::SinkExt;
        tx.send(Ok(Bytes::from_static(b"first chunk")))
            .await
            .unwrap();
        let fut = Box::pin(layout.write(&key, payload, PutOptions::default(), 1000));
        // Drive the upload until it waits for the next chunk, then drop it, as axum does when
        // a client disconnects.
        let mut fut = fut;
        let polled = futures::poll!(&mut fut);
        assert!(polled.is_pending());
        // The temp file exists while the upload is in progress...
        assert_eq!(files_under(&dir.path().join("tmp")).len(), 1);
        drop(fut);
        // ...and is gone once it is dropped.
        assert!(files_under(dir.path()).is_empty());
        assert!(matches!(
            layout.open(&key).await,
            Err(StorageError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn replacing_an_object_changes_etag_and_headers_together() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let key = ObjectKey::parse("k").unwrap();
        let first = layout
            .write(
                &key,
                Bytes::from_static(b"one").into(),
                PutOptions {
                    content_type: Some("a/b".into()),
                    content_encoding: Some("zstd".into()),
                },
                100,
            )
            .await
            .unwrap();
        // A reader that opened the first version keeps it after the replacement.
        let reader = layout.open(&key).await.unwrap();
        let second = layout
            .write(
                &key,
                Bytes::from_static(b"second").into(),
                PutOptions::default(),
                100,
            )
            .await
            .unwrap();
        assert_ne!(first.etag, second.etag);
        assert_eq!(reader.meta, first);
        let mut old = String::new();
        reader
            .into_reader(0, 3)
            .await
            .unwrap()
            .read_to_string(&mut old)
            .await
            .unwrap();
        assert_eq!(old, "one");
        let now = layout.open(&key).await.unwrap();
        assert_eq!(now.meta, second);
        assert_eq!(now.meta.content_encoding, None);
        assert_eq!(files_under(&dir.path().join("objects")).len(), 1);
    }

    #[tokio::test]
    async fn sweep_uses_modification_time() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let old = ObjectKey::parse("old").unwrap();
        let new = ObjectKey::parse("new").unwrap();
        for k in [&old, &new] {
            layout
                .write(
                    k,
                    Bytes::from_static(b"x").into(),
                    PutOptions::default(),
                    10,
                )
                .await
                .unwrap();
        }
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(layout.object_path(&old))
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        // A temp file of a live upload is never swept, however old.
        let temp = layout.new_temp_path();
        std::fs::write(&temp, b"live").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&temp)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();

        assert_eq!(layout.sweep(Duration::from_secs(3600)).await.unwrap(), 1);
        assert!(matches!(
            layout.open(&old).await,
            Err(StorageError::NotFound { .. })
        ));
        assert!(layout.open(&new).await.is_ok());
        assert!(temp.exists());
        assert_eq!(layout.sweep(Duration::from_secs(3600)).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn corrupt_files_are_reported_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let key = ObjectKey::parse("k").unwrap();
        layout
            .write(
                &key,
                Bytes::from_static(b"x").into(),
                PutOptions::default(),
                10,
            )
            .await
            .unwrap();
        let path = layout.object_path(&key);
        for bad in [
            &b"SPWL"[..],
            &b"NOTMAGIC\x02\x00\x00\x00{}"[..],
            &b"SPWLOBJ1\xff\xff\xff\x7f{}"[..],
            &b"SPWLOBJ1\x02\x00\x00\x00[]"[..],
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = layout.open(&key).await.err().unwrap();
            assert!(matches!(err, StorageError::Io { .. }), "{err:?}");
        }
        let stream = stream::iter(vec![Ok(Bytes::from_static(b"y"))]).boxed();
        layout
            .write(
                &key,
                PutPayload::Stream {
                    stream,
                    size_hint: None,
                },
                PutOptions::default(),
                10,
            )
            .await
            .unwrap();
        assert_eq!(layout.open(&key).await.unwrap().meta.size, 1);
    }
}
