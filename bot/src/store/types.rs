//! The store's vocabulary: typed ids, job kinds and statuses, and the records read and written.
//!
//! Discord ids (snowflakes) are `u64` here and TEXT in SQLite, whose integers are signed.
//! Times are unix milliseconds.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::params::Aspect;

/// A job's id: the `jobs.id` row id. Never negative; the store hands out ids from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Defines a string-backed enum with its SQL spelling, `Display` and `FromStr` in one place.
macro_rules! sql_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &[$name] = &[$($name::$variant,)*];

            /// The spelling stored in SQLite.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(format!("unknown {} {other:?}", stringify!($name))),
                }
            }
        }
    };
}

sql_enum! {
    /// What a job was asked to do.
    JobKind {
        /// `/imagine`: a fresh grid.
        Imagine => "imagine",
        /// U1..U4: one image of the parent grid, alone and full size.
        Upscale => "upscale",
        /// V1..V4: four variations of one image of the parent grid.
        Variation => "variation",
        /// 🔄: the parent's prompt and parameters, new seeds.
        Reroll => "reroll",
        /// Vary (Subtle) under a single image.
        VarySubtle => "vary_subtle",
        /// Vary (Strong) under a single image.
        VaryStrong => "vary_strong",
        /// Zoom Out under a single image: four outpaintings around it, shrunk.
        ZoomOut => "zoom_out",
        /// ⬅️ ➡️ ⬆️ ⬇️ under a single image: four outpaintings extending it that way.
        Pan => "pan",
        /// Upscale (Subtle) under a single image: 2x, lightly repainted tile by tile.
        UpscaleSubtle => "upscale_subtle",
        /// Upscale (Creative): 2x, repainted more.
        UpscaleCreative => "upscale_creative",
        /// Vary (Region) under a single image: four repaintings of the picked region.
        VaryRegion => "vary_region",
    }
}

sql_enum! {
    /// Where a job is in its life. `Queued -> Running -> Done`, with `Failed` and `Cancelled`
    /// reachable from both live states, and `Running -> Queued` only when resuming after a
    /// restart. A job ends (`Done`, `Failed` or `Cancelled`) exactly once.
    JobStatus {
        Queued => "queued",
        Running => "running",
        Done => "done",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

impl JobKind {
    /// Whether the job makes one image (shown with the toolbox) rather than a grid.
    pub fn makes_single_image(self) -> bool {
        matches!(
            self,
            JobKind::Upscale | JobKind::UpscaleSubtle | JobKind::UpscaleCreative
        )
    }
}

impl JobStatus {
    /// Whether the job has ended; an ended job never changes status again.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// The statuses from which a job may move to `self`.
    pub fn allowed_sources(self) -> &'static [JobStatus] {
        match self {
            JobStatus::Queued => &[JobStatus::Running],
            JobStatus::Running => &[JobStatus::Queued],
            JobStatus::Done => &[JobStatus::Running],
            JobStatus::Failed | JobStatus::Cancelled => &[JobStatus::Queued, JobStatus::Running],
        }
    }

    /// Whether `self -> to` is a legal transition.
    pub fn can_become(self, to: JobStatus) -> bool {
        to.allowed_sources().contains(&self)
    }
}

/// The generation parameters of a job, stored as JSON in `jobs.params_json`. New optional
/// fields get `#[serde(default)]` so rows written by older versions still read.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobParams {
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    /// Classifier-free guidance scale.
    pub guidance: f32,
    /// The engine's scheduler name, e.g. "euler_a".
    pub scheduler: String,
    #[serde(default)]
    pub aspect: Aspect,
    #[serde(default)]
    pub chaos: u32,
    #[serde(default)]
    pub stylize: Option<u32>,
    /// img2img strength for variations and vary jobs; `None` for text-to-image.
    #[serde(default)]
    pub strength: Option<f32>,
    /// The image prompt (`/imagine` attachment) saved in the data dir, for image-to-image.
    #[serde(default)]
    pub init_image: Option<String>,
    /// The precision the job asks for: its parent's, so that a button reproduces the image
    /// it was pressed under. `None`: the worker's own (see [`Job::compute`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// Zoom Out: how much the parent image shrinks (1.5 or 2) into the middle of the canvas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoom: Option<f32>,
    /// Pan: which way the canvas grows (`left`, `right`, `up`, `down`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pan: Option<String>,
    /// Vary (Region) picked in the menu: the areas, as [`crate::region::Region::encode`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Vary (Region) by `/region`: the painted mask, saved in the data dir (white repaints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_mask: Option<String>,
}

/// What a finished job computed in and on, as recorded in its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compute {
    /// `fp32`, `bf16` or `fp16`.
    pub precision: String,
    /// `cpu`, `cuda:0`, `metal:0`.
    pub device: String,
}

/// The job a button was pressed under, and which of its images (U/V buttons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Parent {
    pub job: JobId,
    pub index: Option<u8>,
}

/// A job as it is asked for: everything [`Store::insert_job`](super::Store::insert_job) writes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub user_id: u64,
    pub channel_id: u64,
    /// `None` in DMs.
    pub guild_id: Option<u64>,
    pub is_dm: bool,
    /// Valid for 15 minutes after the interaction; `None` for plain DM messages.
    pub interaction_token: Option<String>,
    /// Set for jobs asked through an interaction (slash command or button); `None` for plain DM
    /// messages, whose messages are the bot's own channel messages.
    pub application_id: Option<u64>,
    /// Whether the bot itself can post where the job was asked (a server that installed it, or
    /// its own DM). `false` in user-installed contexts (group DMs, servers without the bot):
    /// once the interaction token is dead, only a DM to the requester reaches them.
    pub bot_in_place: bool,
    pub kind: JobKind,
    pub parent: Option<Parent>,
    pub prompt: String,
    pub negative_prompt: String,
    pub params: JobParams,
    pub model: String,
    /// One seed per image to generate.
    pub seeds: Vec<u32>,
}

/// A job as stored: the request plus everything that happened to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub request: NewJob,
    /// The bot's message showing this job, once posted.
    pub message_id: Option<u64>,
    pub status: JobStatus,
    /// Why it failed (only for `Failed`).
    pub error: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// When it last started running; cleared when requeued.
    pub started_at: Option<i64>,
    /// When it ended (done, failed or cancelled).
    pub finished_at: Option<i64>,
    /// How far its admission and delivery have got.
    pub delivery: Delivery,
    /// What it computed in and on, once done (migration 0004; `None` for older rows).
    pub compute: Option<Compute>,
}

/// A job's admission and delivery state (migration 0002).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// `false` while the first reply is unconfirmed: such a job never runs.
    pub admitted: bool,
    /// When Discord confirmed the job's final message; `None` for an ended job means it is
    /// still in the outbox.
    pub delivered_at: Option<i64>,
    /// Failed delivery attempts so far.
    pub attempts: u32,
    /// When the "the result will come by DM" notice was shown (user-installed contexts).
    pub dm_notice_at: Option<i64>,
    /// The image prompt's URL, kept until it is downloaded.
    pub image_url: Option<String>,
}

impl Default for Delivery {
    /// A job admitted and not yet delivered.
    fn default() -> Self {
        Delivery {
            admitted: true,
            delivered_at: None,
            attempts: 0,
            dm_notice_at: None,
            image_url: None,
        }
    }
}

/// One finished image of a job, as written to disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// Position in the job's grid, from 0.
    pub idx: u8,
    pub seed: u32,
    /// Must be valid UTF-8 (stored as TEXT).
    pub path: PathBuf,
    /// Hex SHA-256 of the PNG file.
    pub sha256: String,
    pub width: u32,
    pub height: u32,
}

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} does not exist")]
    NotFound(JobId),
    #[error("job {job} is {from} and cannot become {to}")]
    IllegalTransition {
        job: JobId,
        from: JobStatus,
        to: JobStatus,
    },
    #[error("job {0} cannot finish without images")]
    NoImages(JobId),
    #[error("image path {0:?} is not valid UTF-8")]
    NonUtf8Path(PathBuf),
    #[error("job {job} has an unreadable {column}: {detail}")]
    Corrupt {
        job: JobId,
        column: &'static str,
        detail: String,
    },
    #[error("could not encode the parameters of a job: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("could not apply database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    /// Every database error passes here, on either back-end: counted for the metrics, so a
    /// store that cannot be reached or refuses writes shows on a graph before users notice.
    fn from(e: sqlx::Error) -> Self {
        crate::metrics::store_error(&e);
        StoreError::Database(e)
    }
}
