//! The store's behaviour as the bot relies on it: what goes in comes out, jobs move only along
//! legal transitions, and nothing is lost across a restart.

use std::path::PathBuf;

use super::test_stores::Reopenable;
use super::*;
use crate::params::Aspect;

pub(super) fn new_job(user_id: u64, prompt: &str) -> NewJob {
    NewJob {
        user_id,
        channel_id: 1_100_000_000_000_000_002,
        guild_id: Some(1_100_000_000_000_000_003),
        is_dm: false,
        interaction_token: Some("aW50ZXJhY3Rpb246dG9rZW4".into()),
        application_id: Some(1_100_000_000_000_000_004),
        bot_in_place: true,
        kind: JobKind::Imagine,
        parent: None,
        prompt: prompt.into(),
        negative_prompt: String::new(),
        params: JobParams {
            width: 512,
            height: 512,
            steps: 4,
            guidance: 0.0,
            scheduler: "euler_a".into(),
            aspect: Aspect::default(),
            chaos: 0,
            stylize: None,
            strength: None,
            init_image: None,
            precision: None,
            zoom: None,
            pan: None,
            region: None,
            region_mask: None,
        },
        model: "sd-turbo".into(),
        seeds: vec![1, 2, 3, 4],
    }
}

pub(super) fn image(idx: u8, seed: u32) -> ImageRecord {
    ImageRecord {
        idx,
        seed,
        path: PathBuf::from(format!("/var/lib/imagine/images/{seed}.png")),
        sha256: format!("{seed:064x}"),
        width: 640,
        height: 448,
    }
}

async fn status(store: &Store, job: JobId) -> JobStatus {
    store.job(job).await.unwrap().expect("job exists").status
}

fn assert_illegal(result: Result<(), StoreError>, from: JobStatus, to: JobStatus) {
    match result {
        Err(StoreError::IllegalTransition { from: f, to: t, .. }) => {
            assert_eq!((f, t), (from, to))
        }
        other => panic!("expected {from} -> {to} to be refused, got {other:?}"),
    }
}

async fn every_field_round_trips(store: Store) {
    let parent = store.insert_job(&new_job(7, "parent")).await.unwrap();
    let request = NewJob {
        user_id: u64::MAX,
        channel_id: 9_007_199_254_740_993, // not representable as f64: must not pass through one
        guild_id: None,
        is_dm: true,
        interaction_token: None,
        application_id: None,
        bot_in_place: false,
        kind: JobKind::Variation,
        parent: Some(Parent {
            job: parent,
            index: Some(3),
        }),
        prompt: "a puppy 🐶 on the beach, \"quoted\" 'single' ; DROP TABLE jobs; --".into(),
        negative_prompt: "grass, trees".into(),
        params: JobParams {
            width: 640,
            height: 448,
            steps: 30,
            guidance: 7.5,
            scheduler: "ddim".into(),
            aspect: Aspect { w: 3, h: 2 },
            chaos: 40,
            stylize: Some(250),
            strength: Some(0.35),
            init_image: Some("inputs/1.png".into()),
            precision: None,
            zoom: None,
            pan: None,
            region: None,
            region_mask: None,
        },
        model: "sd15".into(),
        seeds: vec![0, 42, u32::MAX],
    };
    let before = super::now_ms();
    let id = store.insert_job(&request).await.unwrap();
    let after = super::now_ms();
    store.set_message(id, u64::MAX - 1).await.unwrap();

    let job = store.job(id).await.unwrap().expect("inserted job");
    assert_eq!(job.id, id);
    assert_eq!(job.request, request);
    assert_eq!(job.message_id, Some(u64::MAX - 1));
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.error, None);
    assert!((before..=after).contains(&job.created_at));
    assert_eq!((job.started_at, job.finished_at), (None, None));

    // The guild-side optional fields, the other way round.
    let guild = store.insert_job(&new_job(8, "guild")).await.unwrap();
    assert_eq!(
        store.job(guild).await.unwrap().unwrap().request,
        new_job(8, "guild")
    );
}

async fn missing_jobs_are_reported(store: Store) {
    let ghost = JobId(999);
    assert!(store.job(ghost).await.unwrap().is_none());
    assert!(store.images(ghost).await.unwrap().is_empty());
    for result in [
        store.mark_running(ghost).await,
        store.fail_job(ghost, "x").await,
        store.cancel_job(ghost).await,
        store.finish_job(ghost, &[image(0, 1)]).await,
        store.set_message(ghost, 5).await,
    ] {
        assert!(
            matches!(result, Err(StoreError::NotFound(JobId(999)))),
            "{result:?}"
        );
    }
}

async fn parent_must_exist(store: Store) {
    let mut orphan = new_job(1, "orphan");
    orphan.kind = JobKind::Upscale;
    orphan.parent = Some(Parent {
        job: JobId(12345),
        index: Some(0),
    });
    let result = store.insert_job(&orphan).await;
    assert!(matches!(result, Err(StoreError::Database(_))), "{result:?}");
}

async fn a_job_runs_then_finishes_with_its_images(store: Store) {
    let id = store.insert_job(&new_job(1, "cat")).await.unwrap();
    store.mark_running(id).await.unwrap();
    let running = store.job(id).await.unwrap().unwrap();
    assert_eq!(running.status, JobStatus::Running);
    assert!(running.started_at.is_some());
    assert!(store.images(id).await.unwrap().is_empty());

    let images: Vec<ImageRecord> = (0..4).map(|i| image(i, 100 + u32::from(i))).collect();
    // Given out of order, read back by index.
    let shuffled = [
        images[2].clone(),
        images[0].clone(),
        images[3].clone(),
        images[1].clone(),
    ];
    store.finish_job(id, &shuffled).await.unwrap();

    let done = store.job(id).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Done);
    assert!(done.finished_at >= done.started_at);
    assert_eq!(store.images(id).await.unwrap(), images);
}

async fn illegal_transitions_are_refused(store: Store) {
    let queued = store.insert_job(&new_job(1, "a")).await.unwrap();
    assert_illegal(
        store.finish_job(queued, &[image(0, 1)]).await,
        JobStatus::Queued,
        JobStatus::Done,
    );
    assert!(store.images(queued).await.unwrap().is_empty());

    store.mark_running(queued).await.unwrap();
    assert_illegal(
        store.mark_running(queued).await,
        JobStatus::Running,
        JobStatus::Running,
    );

    store.finish_job(queued, &[image(0, 1)]).await.unwrap();
    let done = queued;
    assert_illegal(
        store.finish_job(done, &[image(1, 2)]).await,
        JobStatus::Done,
        JobStatus::Done,
    );
    assert_illegal(
        store.fail_job(done, "late").await,
        JobStatus::Done,
        JobStatus::Failed,
    );
    assert_illegal(
        store.cancel_job(done).await,
        JobStatus::Done,
        JobStatus::Cancelled,
    );
    assert_illegal(
        store.mark_running(done).await,
        JobStatus::Done,
        JobStatus::Running,
    );
    // The refused attempts changed nothing.
    let job = store.job(done).await.unwrap().unwrap();
    assert_eq!((job.status, job.error), (JobStatus::Done, None));
    assert_eq!(store.images(done).await.unwrap(), vec![image(0, 1)]);
}

async fn a_job_ends_exactly_once(store: Store) {
    // failed from queued (e.g. its model vanished) and from running
    let a = store.insert_job(&new_job(1, "a")).await.unwrap();
    store.fail_job(a, "model not found").await.unwrap();
    let b = store.insert_job(&new_job(1, "b")).await.unwrap();
    store.mark_running(b).await.unwrap();
    store.fail_job(b, "out of memory").await.unwrap();
    // cancelled from queued and from running
    let c = store.insert_job(&new_job(1, "c")).await.unwrap();
    store.cancel_job(c).await.unwrap();
    let d = store.insert_job(&new_job(1, "d")).await.unwrap();
    store.mark_running(d).await.unwrap();
    store.cancel_job(d).await.unwrap();

    let failed = store.job(a).await.unwrap().unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("model not found"));
    assert!(failed.finished_at.is_some());
    assert_eq!(status(&store, b).await, JobStatus::Failed);
    assert_eq!(status(&store, c).await, JobStatus::Cancelled);
    assert_eq!(status(&store, d).await, JobStatus::Cancelled);

    for (job, from) in [
        (a, JobStatus::Failed),
        (b, JobStatus::Failed),
        (c, JobStatus::Cancelled),
        (d, JobStatus::Cancelled),
    ] {
        assert_illegal(store.fail_job(job, "again").await, from, JobStatus::Failed);
        assert_illegal(store.cancel_job(job).await, from, JobStatus::Cancelled);
        assert_illegal(store.mark_running(job).await, from, JobStatus::Running);
        assert_illegal(
            store.finish_job(job, &[image(0, 1)]).await,
            from,
            JobStatus::Done,
        );
    }
    // The first error is kept.
    assert_eq!(
        store.job(a).await.unwrap().unwrap().error.as_deref(),
        Some("model not found")
    );
}

#[test]
fn the_transition_table_is_the_documented_one() {
    use JobStatus::*;
    let legal: Vec<(JobStatus, JobStatus)> = JobStatus::ALL
        .iter()
        .flat_map(|&from| JobStatus::ALL.iter().map(move |&to| (from, to)))
        .filter(|&(from, to)| from.can_become(to))
        .collect();
    assert_eq!(
        legal,
        [
            (Queued, Running),
            (Queued, Failed),
            (Queued, Cancelled),
            (Running, Queued),
            (Running, Done),
            (Running, Failed),
            (Running, Cancelled),
        ]
    );
    for status in JobStatus::ALL {
        assert_eq!(status.as_str().parse::<JobStatus>(), Ok(*status));
    }
    for kind in JobKind::ALL {
        assert_eq!(kind.as_str().parse::<JobKind>(), Ok(*kind));
    }
}

async fn images_are_stored_with_their_job_or_not_at_all(store: Store) {
    let id = store.insert_job(&new_job(1, "cat")).await.unwrap();
    store.mark_running(id).await.unwrap();

    // A duplicate index fails the insert half-way: the job must stay running, with no images.
    let result = store
        .finish_job(id, &[image(0, 1), image(1, 2), image(1, 3)])
        .await;
    assert!(matches!(result, Err(StoreError::Database(_))), "{result:?}");
    assert_eq!(status(&store, id).await, JobStatus::Running);
    assert!(store.images(id).await.unwrap().is_empty());

    // No images at all is refused before touching the database.
    assert!(matches!(
        store.finish_job(id, &[]).await,
        Err(StoreError::NoImages(_))
    ));
    assert_eq!(status(&store, id).await, JobStatus::Running);

    // The retry succeeds.
    store
        .finish_job(id, &[image(0, 1), image(1, 2)])
        .await
        .unwrap();
    assert_eq!(status(&store, id).await, JobStatus::Done);
    assert_eq!(store.images(id).await.unwrap().len(), 2);
}

#[cfg(unix)]
#[tokio::test]
async fn non_utf8_image_paths_are_refused_atomically() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let store = super::test_stores::sqlite().await;
    let id = store.insert_job(&new_job(1, "cat")).await.unwrap();
    store.mark_running(id).await.unwrap();
    let mut bad = image(1, 2);
    bad.path = PathBuf::from(OsStr::from_bytes(b"/tmp/\xff.png"));
    let result = store.finish_job(id, &[image(0, 1), bad]).await;
    assert!(
        matches!(result, Err(StoreError::NonUtf8Path(_))),
        "{result:?}"
    );
    assert_eq!(status(&store, id).await, JobStatus::Running);
    assert!(store.images(id).await.unwrap().is_empty());
}

async fn unfinished_jobs_are_listed_oldest_first(store: Store) {
    let mut ids = Vec::new();
    for prompt in ["first", "second", "third", "fourth", "fifth"] {
        ids.push(store.insert_job(&new_job(1, prompt)).await.unwrap());
    }
    store.mark_running(ids[0]).await.unwrap();
    store.finish_job(ids[0], &[image(0, 1)]).await.unwrap();
    store.mark_running(ids[2]).await.unwrap();
    store.cancel_job(ids[3]).await.unwrap();

    let unfinished = store.unfinished_jobs().await.unwrap();
    let listed: Vec<(&str, JobStatus)> = unfinished
        .iter()
        .map(|j| (j.request.prompt.as_str(), j.status))
        .collect();
    assert_eq!(
        listed,
        [
            ("second", JobStatus::Queued),
            ("third", JobStatus::Running),
            ("fifth", JobStatus::Queued),
        ]
    );
    assert!(unfinished
        .windows(2)
        .all(|w| w[0].created_at <= w[1].created_at));
}

async fn active_jobs_are_counted_per_user(store: Store) {
    let alice = 1_000_000_000_000_000_001;
    let bob = 1_000_000_000_000_000_002;
    let a: Vec<JobId> = {
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(
                store
                    .insert_job(&new_job(alice, &format!("a{i}")))
                    .await
                    .unwrap(),
            );
        }
        ids
    };
    store.insert_job(&new_job(bob, "b")).await.unwrap();
    assert_eq!(store.active_jobs_for_user(alice).await.unwrap(), 4);
    assert_eq!(store.active_jobs_for_user(bob).await.unwrap(), 1);
    assert_eq!(store.active_jobs_for_user(42).await.unwrap(), 0);

    store.mark_running(a[0]).await.unwrap(); // running still counts
    assert_eq!(store.active_jobs_for_user(alice).await.unwrap(), 4);
    store.finish_job(a[0], &[image(0, 1)]).await.unwrap();
    store.fail_job(a[1], "boom").await.unwrap();
    store.cancel_job(a[2]).await.unwrap();
    assert_eq!(store.active_jobs_for_user(alice).await.unwrap(), 1);
    assert_eq!(store.active_jobs_for_user(bob).await.unwrap(), 1);
}

#[tokio::test]
async fn reopening_the_sqlite_file_keeps_everything() {
    reopening_keeps_everything(Reopenable::sqlite_file()).await;
}

#[cfg(unix)]
#[tokio::test]
async fn reconnecting_to_postgres_keeps_everything() {
    reopening_keeps_everything(Reopenable::postgres().await).await;
}

async fn reopening_keeps_everything(db: Reopenable) {
    let (done, queued, running, done_job, images) = {
        let store = db.open().await;
        let done = store.insert_job(&new_job(1, "done")).await.unwrap();
        let queued = store.insert_job(&new_job(1, "queued")).await.unwrap();
        let running = store.insert_job(&new_job(2, "running")).await.unwrap();
        store.set_message(done, 77).await.unwrap();
        store.mark_running(done).await.unwrap();
        let images = vec![image(0, 5), image(1, 6), image(2, 7), image(3, 8)];
        store.finish_job(done, &images).await.unwrap();
        store.mark_running(running).await.unwrap();
        let done_job = store.job(done).await.unwrap().unwrap();
        store.close().await;
        (done, queued, running, done_job, images)
    };

    // The restart: open again (migrations already applied must be a no-op) and resume.
    let store = db.open().await;
    assert_eq!(store.job(done).await.unwrap().unwrap(), done_job);
    assert_eq!(store.images(done).await.unwrap(), images);
    assert_eq!(store.requeue_running().await.unwrap(), 1);
    let resumed = store.unfinished_jobs().await.unwrap();
    let resumed: Vec<(JobId, JobStatus, Option<i64>)> = resumed
        .iter()
        .map(|j| (j.id, j.status, j.started_at))
        .collect();
    assert_eq!(
        resumed,
        [
            (queued, JobStatus::Queued, None),
            (running, JobStatus::Queued, None)
        ]
    );
    // A requeued job runs again normally.
    store.mark_running(running).await.unwrap();
    store.finish_job(running, &[image(0, 9)]).await.unwrap();
    // New ids keep growing after the restart.
    let next = store.insert_job(&new_job(3, "after")).await.unwrap();
    assert!(next > running);
    store.close().await;
}

async fn requeue_touches_only_running_jobs(store: Store) {
    let queued = store.insert_job(&new_job(1, "q")).await.unwrap();
    let done = store.insert_job(&new_job(1, "d")).await.unwrap();
    store.mark_running(done).await.unwrap();
    store.finish_job(done, &[image(0, 1)]).await.unwrap();
    assert_eq!(store.requeue_running().await.unwrap(), 0);
    assert_eq!(status(&store, queued).await, JobStatus::Queued);
    assert_eq!(status(&store, done).await, JobStatus::Done);
}

#[tokio::test]
async fn the_database_file_uses_wal_and_enforces_foreign_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("wal.sqlite")).await.unwrap();
    let Pool::Sqlite(pool) = &store.pool else {
        panic!("Store::open opens SQLite")
    };
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(foreign_keys, 1);
    store.close().await;
    assert!(dir.path().join("wal.sqlite").exists());
}

#[tokio::test]
async fn open_creates_the_file_and_refuses_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.sqlite");
    assert!(!path.exists());
    Store::open(&path).await.unwrap().close().await;
    assert!(path.exists());
    let nowhere = dir.path().join("no/such/dir/db.sqlite");
    assert!(Store::open(&nowhere).await.is_err());
}

async fn corrupt_rows_are_reported_not_panicked_on(store: Store) {
    let id = store.insert_job(&new_job(1, "cat")).await.unwrap();
    store
        .execute_for_test(
            "UPDATE jobs SET seeds = 'not json', user_id = 'abc' WHERE id = $1",
            &[id.0],
        )
        .await
        .unwrap();
    match store.job(id).await {
        Err(StoreError::Corrupt { job, column, .. }) => {
            assert_eq!((job, column), (id, "user_id"));
        }
        other => panic!("expected a corrupt row, got {other:?}"),
    }
}

#[tokio::test]
async fn concurrent_finishers_cannot_both_win_on_sqlite() {
    concurrent_finishers_cannot_both_win(Reopenable::sqlite_file()).await;
}

#[cfg(unix)]
#[tokio::test]
async fn concurrent_finishers_cannot_both_win_on_postgres() {
    concurrent_finishers_cannot_both_win(Reopenable::postgres().await).await;
}

/// Two stores on one database, as two processes (or a gateway and a worker) would have.
async fn concurrent_finishers_cannot_both_win(db: Reopenable) {
    let store = db.open().await;
    let id = store.insert_job(&new_job(1, "race")).await.unwrap();
    store.mark_running(id).await.unwrap();
    let (s1, s2) = (store.clone(), db.open().await);
    let finish = tokio::spawn(async move { s1.finish_job(id, &[image(0, 1)]).await });
    let cancel = tokio::spawn(async move { s2.cancel_job(id).await });
    let (finish, cancel) = (finish.await.unwrap(), cancel.await.unwrap());
    assert!(
        finish.is_ok() != cancel.is_ok(),
        "exactly one must win: {finish:?} / {cancel:?}"
    );
    let job = store.job(id).await.unwrap().unwrap();
    let images = store.images(id).await.unwrap();
    if finish.is_ok() {
        assert_eq!((job.status, images.len()), (JobStatus::Done, 1));
    } else {
        assert_eq!((job.status, images.len()), (JobStatus::Cancelled, 0));
    }
    store.close().await;
}

/// A database made by the previous version (migrations 1-4) with a grid, a U job under it and
/// their images: the toolbox migration (5) rebuilds the jobs table and loses nothing, keeps
/// the foreign keys working, and admits the new kinds.
#[tokio::test]
async fn the_toolbox_migration_keeps_every_job_and_image() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let (grid, child, grid_job, child_job, images) = {
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let mut old = sqlx::migrate!("../migrations");
        old.migrations = std::borrow::Cow::Owned(
            old.migrations
                .iter()
                .filter(|m| m.version <= 4)
                .cloned()
                .collect(),
        );
        old.run(&pool).await.unwrap();
        let store = Store {
            pool: Pool::Sqlite(pool),
        };
        let grid = store.insert_job(&new_job(1, "a grid")).await.unwrap();
        store.mark_running(grid).await.unwrap();
        let images = vec![image(0, 5), image(1, 6), image(2, 7), image(3, 8)];
        let compute = Compute {
            precision: "fp16".into(),
            device: "cuda:0".into(),
        };
        store
            .finish_job_on(grid, &images, Some(&compute))
            .await
            .unwrap();
        let mut u = new_job(2, "a grid");
        u.kind = JobKind::Upscale;
        u.parent = Some(Parent {
            job: grid,
            index: Some(1),
        });
        let child = store.insert_job(&u).await.unwrap();
        let grid_job = store.job(grid).await.unwrap().unwrap();
        let child_job = store.job(child).await.unwrap().unwrap();
        store.close().await;
        (grid, child, grid_job, child_job, images)
    };

    let store = Store::open(&path).await.unwrap();
    assert_eq!(store.job(grid).await.unwrap().unwrap(), grid_job);
    assert_eq!(store.job(child).await.unwrap().unwrap(), child_job);
    assert_eq!(store.images(grid).await.unwrap(), images);
    // The new kinds are accepted, with their parent; a parent that does not exist is not.
    let mut pan = new_job(3, "a grid");
    pan.kind = JobKind::Pan;
    pan.parent = Some(Parent {
        job: child,
        index: Some(0),
    });
    let id = store.insert_job(&pan).await.unwrap();
    assert_eq!(
        store.job(id).await.unwrap().unwrap().request.kind,
        JobKind::Pan
    );
    pan.parent = Some(Parent {
        job: JobId(9_999),
        index: Some(0),
    });
    assert!(
        store.insert_job(&pan).await.is_err(),
        "the foreign key holds"
    );
    // New ids continue after the old ones.
    assert!(id.0 > child.0);
}

/// Each SQLite migration has its PostgreSQL twin, same version and name, so both back-ends
/// reach the same schema. A new `migrations/NNNN_name.sql` needs
/// `migrations/postgres/NNNN_name.sql`.
#[test]
fn every_migration_has_a_postgres_twin() {
    let describe = |m: &sqlx::migrate::Migrator| -> Vec<(i64, String)> {
        m.iter()
            .map(|m| (m.version, m.description.to_string()))
            .collect()
    };
    let sqlite = describe(&sqlx::migrate!("../migrations"));
    let postgres = describe(&sqlx::migrate!("../migrations/postgres"));
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, postgres);
}

on_both_backends! {
    every_field_round_trips,
    missing_jobs_are_reported,
    parent_must_exist,
    a_job_runs_then_finishes_with_its_images,
    illegal_transitions_are_refused,
    a_job_ends_exactly_once,
    images_are_stored_with_their_job_or_not_at_all,
    unfinished_jobs_are_listed_oldest_first,
    active_jobs_are_counted_per_user,
    requeue_touches_only_running_jobs,
    corrupt_rows_are_reported_not_panicked_on,
}
