//! The two scenarios, on the same hub and fleet.
//!
//! * **One app, 3 stages.** A repository whose one app targets every labelled cluster with the
//!   pipeline `regions`; the source is added and its first revision promoted (measured as the
//!   initial rollout); then `--rounds` times: commit a change, t0, `SyncSource`, wait until the
//!   new revision's rollout has succeeded.
//! * **N apps at once.** The single-app source is removed first (every session drops the app);
//!   then a repository of `--apps` apps, all with the same pipeline, on the `--apps-sessions`
//!   first clusters; its first revision is promoted, then `--apps-rounds` times one commit that
//!   changes every app, t0, `SyncSource`, wait until every app's rollout has succeeded.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use flotilla_proto::v1::{AddSourceRequest, RemoveSourceRequest};
use flotilla_tests::bench::prog;
use serde::Serialize;

use crate::measure::{Ctx, RoundTimes, Trigger, short};
use crate::repo::{PromoteRepo, Targets};
use crate::setup::Scopes;

pub const SINGLE_SOURCE: &str = "promote-single";
pub const SINGLE_APP: &str = "promo";
pub const MANY_SOURCE: &str = "promote-many";
/// Far longer than the run: only `SyncSource` makes a source fetch.
const INTERVAL_SECS: u64 = 24 * 3600;

/// One scenario's rounds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioReport {
    pub apps: usize,
    pub sessions: usize,
    /// The first revision, from AddSource.
    pub initial: Option<RoundTimes>,
    /// The measured commits, from SyncSource.
    pub rounds: Vec<RoundTimes>,
}

impl ScenarioReport {
    /// Whether any rollout of the scenario completed.
    pub fn measured(&self) -> bool {
        self.initial.is_some() || !self.rounds.is_empty()
    }
}

fn add_source(name: &str, repo: &PromoteRepo) -> AddSourceRequest {
    AddSourceRequest {
        name: name.into(),
        url: repo.url(),
        r#ref: "main".into(),
        path: String::new(),
        interval_seconds: INTERVAL_SECS,
        secret_file: String::new(),
        webhook_secret_file: String::new(),
        ..Default::default()
    }
}

fn print_round(r: &RoundTimes) {
    let stages: Vec<String> = r
        .stages
        .iter()
        .map(|s| format!("{} {:.0} ms", s.name, s.finished_ms - s.started_ms))
        .collect();
    let apps = if r.apps > 1 {
        format!(
            "; apps succeeded first {:.0} / median {:.0} ms",
            r.first_done_ms, r.median_done_ms
        )
    } else {
        String::new()
    };
    println!(
        "{}: {}: {} on {} sessions: every rollout succeeded {:.0} ms after t0 (trigger answered \
         {:.0} ms, all sessions hold it {:.0} ms; {}{apps}; hub CPU {:.1} s)",
        prog(),
        r.label,
        short(&r.commit),
        r.sessions,
        r.done_ms,
        r.trigger_ms,
        r.all_hold_ms,
        stages.join(", "),
        r.hub_cpu_secs
    );
}

/// What one scenario promotes, where.
struct Plan<'a> {
    source: &'a str,
    /// The fleet repository to create, its apps and which clusters they target.
    repo_dir: PathBuf,
    apps: Vec<String>,
    targets: &'a Targets,
    scope: &'a HashSet<String>,
    rounds: u32,
}

/// Creates the plan's repository and promotes its first revision, then `rounds` commits;
/// results go to `rep` as they come, so that a failure leaves the rounds before it.
async fn run(ctx: &mut Ctx<'_>, plan: Plan<'_>, rep: &mut ScenarioReport) -> Result<()> {
    let Plan {
        source,
        repo_dir,
        apps,
        targets,
        scope,
        rounds,
    } = plan;
    let (repo, c0) = PromoteRepo::create(&repo_dir, apps.clone(), targets)?;
    let (repo, c0, apps) = (&repo, c0.as_str(), apps.as_slice());
    rep.apps = apps.len();
    rep.sessions = scope.len();
    println!(
        "{}: adding source {source}: {} app(s) on {} clusters; waiting for its first revision",
        prog(),
        apps.len(),
        scope.len()
    );
    let r = ctx
        .round(
            "initial",
            Trigger::AddSource(add_source(source, repo)),
            apps,
            c0,
            scope,
        )
        .await?;
    print_round(&r);
    rep.initial = Some(r);
    for round in 1..=rounds {
        let commit = repo.commit_round(round)?;
        let r = ctx
            .round(
                &format!("round {round}/{rounds}"),
                Trigger::Sync(source.to_string()),
                apps,
                &commit,
                scope,
            )
            .await?;
        print_round(&r);
        rep.rounds.push(r);
    }
    Ok(())
}

/// One app, 3 stages, on every labelled cluster.
pub async fn single(
    ctx: &mut Ctx<'_>,
    scopes: &Scopes,
    dir: &Path,
    rounds: u32,
    rep: &mut ScenarioReport,
) -> Result<()> {
    let plan = Plan {
        source: SINGLE_SOURCE,
        repo_dir: dir.join("single-repo"),
        apps: vec![SINGLE_APP.to_string()],
        targets: &Targets::Staged,
        scope: &scopes.all,
        rounds,
    };
    run(ctx, plan, rep).await
}

/// `apps` apps at once on the 100-app scenario's clusters; `after_single`: remove the
/// single-app source first and wait until every session dropped its app.
pub async fn many(
    ctx: &mut Ctx<'_>,
    scopes: &Scopes,
    dir: &Path,
    apps: usize,
    rounds: u32,
    after_single: bool,
    rep: &mut ScenarioReport,
) -> Result<()> {
    if after_single {
        println!("{}: removing source {SINGLE_SOURCE}", prog());
        ctx.drain();
        ctx.admin
            .remove_source(RemoveSourceRequest {
                name: SINGLE_SOURCE.into(),
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow!("RemoveSource: {:?}: {}", s.code(), s.message()))?;
        let dropped = ctx.settle(scopes.all.len()).await?;
        println!(
            "{}: {dropped} of {} sessions dropped app {SINGLE_APP}",
            prog(),
            scopes.all.len()
        );
    }
    let plan = Plan {
        source: MANY_SOURCE,
        repo_dir: dir.join("many-repo"),
        apps: (0..apps).map(|a| format!("app-{a:03}")).collect(),
        targets: &scopes.many_targets,
        scope: &scopes.many,
        rounds,
    };
    run(ctx, plan, rep).await
}
