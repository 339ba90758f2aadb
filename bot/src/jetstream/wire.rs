//! The messages between a gateway and its workers: JSON, read strictly and with limits (a
//! message from the network is outside input like any other).

use serde::{Deserialize, Serialize};

use crate::store::{Compute, Delivery, Job, JobId, JobKind, JobParams, JobStatus, NewJob, Parent};

/// The largest job or result message accepted (prompts are capped far below this).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Header carrying a progress message's percentage; the body is the preview PNG, if any.
pub const PERCENT_HEADER: &str = "Imagine-Percent";

/// A job as a worker needs it: what to make, and the names of its input files in the bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobOrder {
    pub job: i64,
    pub kind: String,
    pub parent: Option<(i64, Option<u8>)>,
    pub prompt: String,
    pub negative_prompt: String,
    pub params: JobParams,
    pub model: String,
    pub seeds: Vec<u32>,
    /// The image the job starts from, in the files bucket.
    pub init_image: Option<String>,
    /// The latents kept beside that image (fast-decoded grids), in the files bucket.
    pub init_latents: Option<String>,
    /// Vary (Region)'s painted mask, in the files bucket.
    #[serde(default)]
    pub region_mask: Option<String>,
}

impl JobOrder {
    /// The order for `job`, whose input files (if any) are uploaded under these names.
    pub fn new(job: &Job, files: InputFiles) -> JobOrder {
        let r = &job.request;
        let mut params = r.params.clone();
        // A gateway path means nothing on a worker: the worker sets its own.
        params.init_image = None;
        params.region_mask = None;
        JobOrder {
            job: job.id.0,
            kind: r.kind.as_str().into(),
            parent: r.parent.map(|p| (p.job.0, p.index)),
            prompt: r.prompt.clone(),
            negative_prompt: r.negative_prompt.clone(),
            params,
            model: r.model.clone(),
            seeds: r.seeds.clone(),
            init_image: files.image,
            init_latents: files.latents,
            region_mask: files.region_mask,
        }
    }

    /// Reads an order, refusing anything malformed or oversized.
    pub fn parse(bytes: &[u8]) -> Result<JobOrder, String> {
        if bytes.len() > MAX_MESSAGE {
            return Err(format!(
                "a job message of {} bytes is too large",
                bytes.len()
            ));
        }
        let order: JobOrder =
            serde_json::from_slice(bytes).map_err(|e| format!("a malformed job message: {e}"))?;
        if order.job <= 0 || order.seeds.is_empty() || order.seeds.len() > 16 {
            return Err(format!(
                "job message {} has no usable id or seeds",
                order.job
            ));
        }
        order
            .kind
            .parse::<JobKind>()
            .map_err(|e| format!("job message {}: {e}", order.job))?;
        Ok(order)
    }

    /// The job as the worker's engine runs it, with its input files where they now lie.
    pub fn to_job(&self, local: LocalInputs) -> Job {
        let mut params = self.params.clone();
        params.init_image = local.image;
        params.region_mask = local.region_mask;
        Job {
            id: JobId(self.job),
            request: NewJob {
                user_id: 0,
                channel_id: 0,
                guild_id: None,
                is_dm: false,
                interaction_token: None,
                application_id: None,
                bot_in_place: false,
                kind: self.kind.parse().unwrap_or(JobKind::Imagine),
                parent: self.parent.map(|(job, index)| Parent {
                    job: JobId(job),
                    index,
                }),
                prompt: self.prompt.clone(),
                negative_prompt: self.negative_prompt.clone(),
                params,
                model: self.model.clone(),
                seeds: self.seeds.clone(),
            },
            message_id: None,
            status: JobStatus::Running,
            error: None,
            created_at: 0,
            started_at: None,
            finished_at: None,
            delivery: Delivery::default(),
            compute: None,
        }
    }
}

/// A job's input files by their names in the files bucket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputFiles {
    pub image: Option<String>,
    pub latents: Option<String>,
    pub region_mask: Option<String>,
}

/// A job's input files on the worker's disk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalInputs {
    pub image: Option<String>,
    pub region_mask: Option<String>,
}

/// How a job ended on a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Done {
        images: Vec<ResultImage>,
        precision: String,
        device: String,
        seconds: f64,
    },
    /// `shown` is what the user reads (no paths).
    Failed { shown: String },
    /// The job panicked or its engine thread died (details in the worker's log).
    Panicked,
}

/// One finished image, in the files bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultImage {
    pub idx: u8,
    pub seed: u32,
    pub sha256: String,
    pub width: u32,
    pub height: u32,
    pub object: String,
    /// The latents kept for U buttons (fast-decoded grids).
    pub latents: Option<String>,
}

/// What a worker sends back when a job ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub job: i64,
    pub worker: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl JobResult {
    pub fn parse(bytes: &[u8]) -> Result<JobResult, String> {
        if bytes.len() > MAX_MESSAGE {
            return Err(format!(
                "a result message of {} bytes is too large",
                bytes.len()
            ));
        }
        let result: JobResult = serde_json::from_slice(bytes)
            .map_err(|e| format!("a malformed result message: {e}"))?;
        if result.job <= 0 {
            return Err("a result message without a job id".into());
        }
        if let Outcome::Done { images, .. } = &result.outcome {
            if images.is_empty() || images.len() > 16 {
                return Err(format!(
                    "result of job {} has {} images",
                    result.job,
                    images.len()
                ));
            }
            for i in images {
                let hex = i.sha256.len() == 64 && i.sha256.chars().all(|c| c.is_ascii_hexdigit());
                if !hex
                    || !file_name_ok(&i.object)
                    || !i.latents.as_deref().is_none_or(file_name_ok)
                {
                    return Err(format!("result of job {} names a bad file", result.job));
                }
            }
        }
        Ok(result)
    }
}

/// Object names we make: `<kind>-<job>-...`, nothing that could name a path.
pub fn file_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.contains("..")
}

/// The compute record of a finished result.
pub fn compute_of(precision: &str, device: &str) -> Compute {
    Compute {
        precision: precision.into(),
        device: device.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> JobOrder {
        JobOrder {
            job: 7,
            kind: "imagine".into(),
            parent: None,
            prompt: "a fox".into(),
            negative_prompt: String::new(),
            params: serde_json::from_str(
                r#"{"width":64,"height":64,"steps":2,"guidance":7.5,"scheduler":"euler_a"}"#,
            )
            .unwrap(),
            model: "tiny".into(),
            seeds: vec![1, 2, 3, 4],
            init_image: None,
            init_latents: None,
            region_mask: None,
        }
    }

    #[test]
    fn orders_round_trip_and_bad_ones_are_refused() {
        let bytes = serde_json::to_vec(&order()).unwrap();
        assert_eq!(JobOrder::parse(&bytes).unwrap(), order());
        let job = order().to_job(LocalInputs {
            image: Some("/tmp/in.png".into()),
            region_mask: None,
        });
        assert_eq!(job.id, JobId(7));
        assert_eq!(
            job.request.params.init_image.as_deref(),
            Some("/tmp/in.png")
        );
        let mut bad = order();
        bad.kind = "explode".into();
        assert!(JobOrder::parse(&serde_json::to_vec(&bad).unwrap()).is_err());
        bad = order();
        bad.seeds.clear();
        assert!(JobOrder::parse(&serde_json::to_vec(&bad).unwrap()).is_err());
        assert!(JobOrder::parse(b"{\"job\":1}").is_err());
        assert!(JobOrder::parse(&vec![b' '; MAX_MESSAGE + 1]).is_err());
    }

    #[test]
    fn results_round_trip_and_never_name_paths() {
        let image = ResultImage {
            idx: 0,
            seed: 1,
            sha256: "ab".repeat(32),
            width: 64,
            height: 64,
            object: "out-7-0.png".into(),
            latents: None,
        };
        let done = JobResult {
            job: 7,
            worker: "w1".into(),
            outcome: Outcome::Done {
                images: vec![image.clone()],
                precision: "fp32".into(),
                device: "cpu".into(),
                seconds: 1.5,
            },
        };
        let bytes = serde_json::to_vec(&done).unwrap();
        assert_eq!(JobResult::parse(&bytes).unwrap(), done);
        let failed = JobResult {
            job: 7,
            worker: "w1".into(),
            outcome: Outcome::Failed { shown: "no".into() },
        };
        assert_eq!(
            JobResult::parse(&serde_json::to_vec(&failed).unwrap()).unwrap(),
            failed
        );
        for object in ["../etc/passwd", "/abs", "a/b", ""] {
            let mut evil = done.clone();
            if let Outcome::Done { images, .. } = &mut evil.outcome {
                images[0].object = object.into();
            }
            assert!(
                JobResult::parse(&serde_json::to_vec(&evil).unwrap()).is_err(),
                "{object}"
            );
        }
    }
}
