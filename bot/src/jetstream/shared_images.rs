//! Finished images shared between the gateways of a sharded bot, with no shared disk: the
//! gateway that records a result also keeps its images in the object store bucket
//! `imagine-images`, under their place in the data folder (`jobs/<id>/<idx>.png`, and the
//! latents kept beside a fast-decoded grid's image). Another gateway that needs them (to
//! deliver a job it took over, or for a button under a result it did not record) finds them
//! missing from its own data folder and fetches them once; from then on they are local.
//! Retention deletes a purged job's objects with its files. A gateway that starts sharded puts
//! what its folder holds and the bucket lacks (a bot sharded later) into the bucket.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, object_store};
use futures_util::StreamExt;

use super::gateway::{download, write_file};
use crate::store::{ImageRecord, JobId, Store};
use crate::worker::latents_path;

pub const IMAGES_BUCKET: &str = "imagine-images";

/// The bucket, and this gateway's data folder its objects are fetched into. Cheap to clone.
#[derive(Clone)]
pub struct SharedImages {
    bucket: object_store::ObjectStore,
    data_dir: PathBuf,
}

impl SharedImages {
    /// Opens the bucket, creating it if this is the first gateway to start.
    pub async fn open(js: &jetstream::Context, data_dir: &Path) -> Result<SharedImages> {
        let bucket = match js.get_object_store(IMAGES_BUCKET).await {
            Ok(bucket) => bucket,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: IMAGES_BUCKET.into(),
                    description: Some(
                        "Imagine: finished images, shared by the gateways of a sharded bot".into(),
                    ),
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .context("creating the images bucket")?,
        };
        Ok(SharedImages {
            bucket,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Keeps a file of a recorded result for the other gateways (before the result is
    /// recorded, so no gateway sees the job done without its images).
    pub async fn put(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let key = key_of(path).with_context(|| format!("{} has no image key", path.display()))?;
        super::retrying(
            "sharing a finished image",
            super::gateway::PUBLISH_LIMIT,
            || {
                let key = key.clone();
                async move {
                    self.bucket.put(key.as_str(), &mut &*bytes).await?;
                    Ok(())
                }
            },
        )
        .await
    }

    /// The images with their files in this gateway's data folder (a gateway reads no other:
    /// the one a path names may be on another machine): one not there yet is fetched from
    /// the bucket, with its kept latents if any. One that cannot be fetched is left as it is
    /// (its reader then says it is missing).
    pub async fn localize(&self, images: Vec<ImageRecord>) -> Vec<ImageRecord> {
        let mut out = Vec::with_capacity(images.len());
        for mut image in images {
            match self.fetch(&image.path).await {
                Ok(path) => image.path = path,
                Err(e) => tracing::warn!("cannot fetch a shared image: {e:#}"),
            }
            out.push(image);
        }
        out
    }

    /// The finished job's file that `path` names, in this data folder: fetched from the
    /// bucket unless it is there already.
    pub async fn fetch(&self, path: &Path) -> Result<PathBuf> {
        let key = key_of(path).with_context(|| format!("{} has no image key", path.display()))?;
        let local = self.data_dir.join(&key);
        if local.exists() {
            return Ok(local);
        }
        let bytes = download(&self.bucket, &key).await?;
        if let Some(folder) = local.parent() {
            tokio::fs::create_dir_all(folder)
                .await
                .with_context(|| format!("cannot create {}", folder.display()))?;
        }
        let latents_key = key_of(&latents_path(&local));
        if let Some(latents_key) = latents_key {
            // Kept only beside fast-decoded grids' images: usually absent.
            if let Ok(latents) = download(&self.bucket, &latents_key).await {
                write_file(&latents_path(&local), latents).await?;
            }
        }
        write_file(&local, bytes).await?;
        tracing::info!(key, "fetched an image another gateway recorded");
        Ok(local)
    }

    /// Puts the finished images of this data folder that the bucket lacks into it: those
    /// recorded before the bot was sharded, so their buttons work on every gateway. Skips
    /// purged jobs (their files are about to go). Returns how many files it put.
    pub async fn backfill(&self, store: &Store) -> Result<usize> {
        let mut known = HashSet::new();
        let mut listed = self
            .bucket
            .list()
            .await
            .context("listing the images bucket")?;
        while let Some(info) = listed.next().await {
            known.insert(info.context("listing the images bucket")?.name);
        }
        let jobs = self.data_dir.join("jobs");
        let files = tokio::task::spawn_blocking(move || job_files(&jobs)).await?;
        let mut put = 0;
        for (job, path) in files {
            let Some(key) = key_of(&path).filter(|k| !known.contains(k)) else {
                continue;
            };
            if store.images_purged(JobId(job)).await? {
                continue;
            }
            let bytes = tokio::fs::read(&path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?;
            self.put(&path, &bytes).await?;
            tracing::debug!(key, "shared an image recorded before sharding");
            put += 1;
        }
        Ok(put)
    }

    /// Deletes a purged job's objects (absent ones are fine).
    pub async fn delete(&self, paths: &[PathBuf]) {
        for path in paths {
            for path in [path.clone(), latents_path(path)] {
                if let Some(key) = key_of(&path) {
                    let _ = self.bucket.delete(key.as_str()).await;
                }
            }
        }
    }
}

/// Each file under `jobs/<id>/`, with its job id.
fn job_files(jobs: &Path) -> Vec<(i64, PathBuf)> {
    let mut files = Vec::new();
    for folder in std::fs::read_dir(jobs).into_iter().flatten().flatten() {
        let Some(job) = folder
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        for file in std::fs::read_dir(folder.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if file.file_type().is_ok_and(|t| t.is_file()) {
                files.push((job, file.path()));
            }
        }
    }
    files
}

/// The object key of a finished job's file: its path from the data folder's `jobs` folder
/// on (`jobs/<id>/<name>`), the same on every gateway whatever its data folder.
pub fn key_of(path: &Path) -> Option<String> {
    // The root of an absolute path carries no name; a name that is not UTF-8 is no key.
    let parts: Vec<&str> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_str()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let at = parts.iter().rposition(|p| *p == "jobs")?;
    let rest = &parts[at..];
    // jobs/<id>/<name>: nothing else is a finished image.
    let [_, id, name] = rest else {
        return None;
    };
    (id.parse::<u64>().is_ok() && !name.is_empty()).then(|| rest.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_path_from_the_jobs_folder_on() {
        assert_eq!(
            key_of(Path::new("/srv/a/data/jobs/12/0.png")).as_deref(),
            Some("jobs/12/0.png")
        );
        assert_eq!(
            key_of(Path::new("/other/jobs/data/jobs/3/1.latents.safetensors")).as_deref(),
            Some("jobs/3/1.latents.safetensors")
        );
        assert_eq!(
            key_of(Path::new("data/jobs/7/2.png")).as_deref(),
            Some("jobs/7/2.png")
        );
        for not_an_image in [
            "/srv/data/inputs/3.png",
            "/srv/data/jobs/x/0.png",
            "/srv/data/jobs/3/sub/0.png",
            "/srv/data/jobs/3",
        ] {
            assert_eq!(key_of(Path::new(not_an_image)), None, "{not_an_image}");
        }
    }
}
