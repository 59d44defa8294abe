//! `flotilla-cli`: the `flotilla` command-line interface — argument parsing and one function per
//! command, all through the hub's Admin API. The binary in `src/main.rs` only calls [`run`].

pub mod client;
pub mod demo;
pub mod output;
pub mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use flotilla_proto::clock::rfc3339_ms;
use flotilla_proto::v1::admin_client::AdminClient;
use flotilla_proto::v1::*;
use serde::Serialize;
use tonic::transport::Channel;

use self::client::{CliError, admin_client, config_path, load_credential};
use self::output::{AppOut, ClusterOut, Format, PinOut, RolloutOut, SourceOut, TokenOut};

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Flotilla: GitOps fleet manager for Kubernetes"
)]
pub struct Cli {
    /// Config file (the hub's admin.yaml format). Default: FLOTILLA_CONFIG, then
    /// ~/.config/flotilla/config.yaml.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register and manage clusters.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Manage join tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Track git sources.
    #[command(subcommand)]
    Source(SourceCmd),
    /// Apps rendered from sources, with their desired and applied revisions per cluster.
    #[command(subcommand)]
    App(AppCmd),
    /// Revisions on their way through the apps' pipelines, and the operator controls.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// The newest operator actions (approvals, pauses, rollbacks, pins): who, when, what.
    Audit {
        /// How many of the newest entries to show.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// The fleet at a glance: clusters connected and app health per region, rollouts in
    /// flight, and the worst clusters with the reasons.
    Status(status::StatusArgs),
    /// The hub itself.
    #[command(subcommand)]
    Hub(HubCmd),
    /// Run a hub and six agents on simulated clusters in three regions (the flotilla-hub and
    /// flotilla-agent binaries beside this one): a release promoted
    /// stage by stage, then a bad one that fails in the canary stage and is rolled back.
    Demo(demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Create a cluster and print its one-line join token.
    Add {
        name: String,
        /// Label `key=value` (repeatable).
        #[arg(long = "label", short = 'l', value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// How long the token is valid.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Allow the token to be used more than once (e.g. to re-join after losing state).
        #[arg(long)]
        reusable: bool,
    },
    /// List clusters.
    List,
    /// Show one cluster.
    Get { name: String },
    /// Set (`k=v`) or remove (`k-`) labels.
    Label {
        name: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Remove a cluster: revokes its certificates and tokens and closes its session.
    Remove { name: String },
    /// Keep a cluster on a kept revision of an app; rollouts skip it until it is unpinned.
    Pin {
        name: String,
        app: String,
        /// A kept revision (a unique prefix is enough).
        revision: String,
    },
    /// Let a pinned cluster follow the app's rollouts again.
    Unpin { name: String, app: String },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Every app's rollout: revision, state, current stage, progress, last good revision.
    List,
    /// One app's rollout, stage by stage.
    Status { app: String },
    /// Let what waits for a person start: STAGE (manual approval), or without STAGE whatever
    /// waits (a removal larger than maxRemoval, a halted removal to retry, the one waiting stage).
    Approve { app: String, stage: Option<String> },
    /// Stop the app's rollouts where they are; new revisions wait until it is resumed.
    Pause { app: String },
    /// Let a paused app's rollouts move again.
    Resume { app: String },
    /// Put every cluster of the app back on a kept revision and end the rollout in flight.
    Rollback {
        app: String,
        /// The revision (a unique prefix is enough). Default: the last good revision.
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SourceCmd {
    /// Track a repository (https, ssh, file:// or a local path).
    Add(AddSourceArgs),
    List,
    Get {
        name: String,
    },
    /// Stop tracking a source: each of its apps leaves its clusters through the app's pipeline.
    /// Says what it will remove and asks first (in a terminal), or needs --yes.
    Remove {
        name: String,
        /// Do not ask: remove what it lists.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Stop managing the apps but leave their objects in the clusters (like
        /// kubectl's --cascade=orphan).
        #[arg(long)]
        keep_resources: bool,
    },
    /// Fetch and render now.
    Sync {
        name: String,
    },
}

/// `flotilla source add`: the source to track, as the hub's `AddSourceRequest` takes it.
#[derive(Debug, clap::Args)]
pub struct AddSourceArgs {
    pub name: String,
    #[arg(long)]
    pub url: String,
    /// Branch, tag, commit, or `HEAD`: the remote's default branch, resolved again at every
    /// fetch (if the remote's HEAD moves from main to trunk, the next fetch follows it).
    #[arg(long = "ref", default_value = "HEAD")]
    pub reference: String,
    /// Directory in the repository holding flotilla.yaml.
    #[arg(long, default_value = "")]
    pub path: String,
    /// Polling interval.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// File on the hub with https credentials (token, or user:password).
    #[arg(long)]
    pub secret_file: Option<String>,
    /// File on the hub with the webhook secret (GitHub/Gitea HMAC key, GitLab token).
    #[arg(long)]
    pub webhook_secret_file: Option<String>,
    /// Let Kustomize and Helm renders of this source reach the network (remote bases); by
    /// default they run without it.
    #[arg(long)]
    pub render_network: bool,
}

impl From<AddSourceArgs> for AddSourceRequest {
    fn from(a: AddSourceArgs) -> Self {
        Self {
            name: a.name,
            url: a.url,
            r#ref: a.reference,
            path: a.path,
            interval_seconds: a.interval.as_secs().max(1),
            secret_file: a.secret_file.unwrap_or_default(),
            webhook_secret_file: a.webhook_secret_file.unwrap_or_default(),
            render_network: a.render_network,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum HubCmd {
    /// The hub's replicas (those sharing an etcd store): which one leads, each one's endpoint,
    /// start and version, and which one answered.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum AppCmd {
    List,
    Get { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// List join tokens (secrets are never shown again).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} must be key=value")),
    }
}

#[derive(Debug, Serialize)]
struct AddOut {
    name: String,
    token: String,
    token_id: String,
    expires_at: Option<String>,
    labels: std::collections::BTreeMap<String, String>,
}

/// Runs one CLI invocation; `Ok(text)` goes to stdout.
pub async fn run(cli: Cli) -> Result<String, CliError> {
    if let Command::Demo(args) = &cli.command {
        return demo::run(args, cli.output).await;
    }
    let path = config_path(cli.config.as_deref())?;
    let cred = load_credential(&path)?;
    let mut admin = admin_client(&cred).await?;
    let fmt = cli.output;
    Ok(match cli.command {
        Command::Cluster(ClusterCmd::Add {
            name,
            labels,
            ttl,
            reusable,
        }) => {
            let resp = admin
                .add_cluster(AddClusterRequest {
                    name,
                    labels: labels.into_iter().collect(),
                    ttl_seconds: ttl.as_secs().max(1),
                    reusable,
                })
                .await?
                .into_inner();
            let c = resp.cluster.unwrap_or_default();
            let t = resp.token_info.unwrap_or_default();
            let out = AddOut {
                name: c.name.clone(),
                token: resp.token.clone(),
                token_id: t.id.clone(),
                expires_at: rfc3339_ms(t.expires_unix_ms),
                labels: c.labels.into_iter().collect(),
            };
            output::render(fmt, &out, |out| {
                format!(
                    "cluster {} added; join token (expires {}{}):\n{}\n\nstart the agent in the cluster with:\n  flotilla-agent --join '{}'\n",
                    out.name,
                    out.expires_at.clone().unwrap_or_default(),
                    if reusable {
                        ", reusable"
                    } else {
                        ", single use"
                    },
                    out.token,
                    out.token
                )
            })
        }
        Command::Cluster(ClusterCmd::List) => {
            let resp = admin.list_clusters(ListClustersRequest::default()).await?;
            output::list(fmt, &resp.into_inner().clusters, output::clusters_table)
        }
        Command::Cluster(ClusterCmd::Get { name }) => {
            let c = admin
                .get_cluster(GetClusterRequest { name })
                .await?
                .into_inner();
            output::render(fmt, &ClusterOut::with_apps(&c), output::cluster_table)
        }
        Command::Cluster(ClusterCmd::Label { name, changes }) => {
            let mut set = HashMap::new();
            let mut remove = Vec::new();
            for ch in changes {
                if let Some((k, v)) = ch.split_once('=') {
                    set.insert(k.to_string(), v.to_string());
                } else if let Some(k) = ch.strip_suffix('-') {
                    remove.push(k.to_string());
                } else {
                    return Err(CliError(format!(
                        "label change {ch:?} must be key=value or key-"
                    )));
                }
            }
            let c = admin
                .label_cluster(LabelClusterRequest { name, set, remove })
                .await?
                .into_inner();
            output::render(fmt, &ClusterOut::from(&c), output::cluster_table)
        }
        Command::Cluster(ClusterCmd::Remove { name }) => {
            let c = admin
                .remove_cluster(RemoveClusterRequest { name })
                .await?
                .into_inner();
            output::render(fmt, &ClusterOut::from(&c), |c| {
                format!(
                    "cluster {} removed: its certificates and tokens are revoked\n",
                    c.name
                )
            })
        }
        Command::Token(TokenCmd::List) => {
            let resp = admin.list_tokens(ListTokensRequest {}).await?;
            output::list(fmt, &resp.into_inner().tokens, output::tokens_table)
        }
        Command::Token(TokenCmd::Revoke { id }) => {
            let t = admin
                .revoke_token(RevokeTokenRequest { id })
                .await?
                .into_inner();
            output::render(fmt, &TokenOut::from(&t), |t| {
                format!("token {} revoked\n", t.id)
            })
        }
        Command::Cluster(ClusterCmd::Pin {
            name,
            app,
            revision,
        }) => {
            let p = admin
                .pin_cluster(PinClusterRequest {
                    cluster: name,
                    app,
                    revision,
                })
                .await?
                .into_inner();
            output::render(fmt, &PinOut::from(&p), |p| {
                format!(
                    "cluster {c} pinned to {a} {}; rollouts skip it until `flotilla cluster unpin {c} {a}`\n",
                    p.revision,
                    c = p.cluster,
                    a = p.app,
                )
            })
        }
        Command::Cluster(ClusterCmd::Unpin { name, app }) => {
            let p = admin
                .unpin_cluster(UnpinClusterRequest { cluster: name, app })
                .await?
                .into_inner();
            output::render(fmt, &PinOut::from(&p), |p| {
                format!(
                    "cluster {} unpinned from {} {}; it follows the app's rollouts again\n",
                    p.cluster, p.app, p.revision
                )
            })
        }
        Command::Source(cmd) => source_command(&mut admin, cmd, fmt).await?,
        Command::Rollout(cmd) => rollout_command(&mut admin, cmd, fmt).await?,
        Command::Audit { limit } => {
            let resp = admin.list_audit(ListAuditRequest { limit }).await?;
            output::list(fmt, &resp.into_inner().entries, output::audit_table)
        }
        Command::App(AppCmd::List) => {
            let resp = admin.list_apps(ListAppsRequest {}).await?;
            output::list(fmt, &resp.into_inner().apps, output::apps_table)
        }
        Command::App(AppCmd::Get { name }) => {
            let app = admin.get_app(GetAppRequest { name }).await?.into_inner();
            output::render(fmt, &AppOut::from(&app), |a| {
                output::apps_table(std::slice::from_ref(a))
            })
        }
        Command::Status(args) => status::run(&mut admin, &args, fmt).await?,
        Command::Hub(HubCmd::Status) => {
            let st = admin
                .get_hub_status(GetHubStatusRequest {})
                .await?
                .into_inner();
            let out = output::HubOut::from(&st);
            output::render(fmt, &out, output::hub_table)
        }
        Command::Demo(_) => unreachable!("handled above"),
    })
}

async fn source_command(
    admin: &mut AdminClient<Channel>,
    cmd: SourceCmd,
    fmt: Format,
) -> Result<String, CliError> {
    let one = |s: Source| output::render(fmt, &SourceOut::from(&s), output::source_table);
    Ok(match cmd {
        SourceCmd::Add(args) => one(admin
            .add_source(AddSourceRequest::from(args))
            .await?
            .into_inner()),
        SourceCmd::List => {
            let resp = admin.list_sources(ListSourcesRequest {}).await?;
            output::list(fmt, &resp.into_inner().sources, output::sources_table)
        }
        SourceCmd::Get { name } => one(admin
            .get_source(GetSourceRequest { name })
            .await?
            .into_inner()),
        SourceCmd::Remove {
            name,
            yes,
            keep_resources,
        } => {
            let plan = admin
                .remove_source(RemoveSourceRequest {
                    name: name.clone(),
                    keep_resources,
                    dry_run: true,
                })
                .await?
                .into_inner();
            let summary = output::removal_summary(&plan, keep_resources);
            if !yes {
                confirm(&summary, &format!("remove source {name}?"))?;
            }
            let done = admin
                .remove_source(RemoveSourceRequest {
                    name: name.clone(),
                    keep_resources,
                    dry_run: false,
                })
                .await?
                .into_inner();
            output::render(fmt, &SourceOut::from(&done), |_| {
                format!(
                    "{}source {name} removed; follow each app with `flotilla rollout status APP`\n",
                    if yes { summary } else { String::new() }
                )
            })
        }
        SourceCmd::Sync { name } => one(admin
            .sync_source(SyncSourceRequest { name })
            .await?
            .into_inner()),
    })
}

/// Shows `summary` and asks `question` on a terminal; without one (a script), refuses: the
/// caller must say --yes.
fn confirm(summary: &str, question: &str) -> Result<(), CliError> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(CliError(format!(
            "not confirmed: {} — run again with --yes to go ahead",
            summary
                .lines()
                .next()
                .unwrap_or_default()
                .trim_end_matches(':')
        )));
    }
    let mut err = std::io::stderr();
    let _ = write!(err, "{summary}{question} [y/N] ");
    let _ = err.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError(format!("cannot read the answer: {e}")))?;
    match answer.trim() {
        "y" | "Y" | "yes" => Ok(()),
        _ => Err(CliError("not confirmed: nothing was removed".into())),
    }
}

async fn rollout_command(
    admin: &mut AdminClient<Channel>,
    cmd: RolloutCmd,
    fmt: Format,
) -> Result<String, CliError> {
    // An action prints what it did, then the rollout as it stands.
    let one = |done: String, r: Rollout| {
        output::render(fmt, &RolloutOut::from(&r), |row| {
            done + &output::rollout_table(row)
        })
    };
    Ok(match cmd {
        RolloutCmd::List => {
            let resp = admin.list_rollouts(ListRolloutsRequest {}).await?;
            output::list(fmt, &resp.into_inner().rollouts, output::rollouts_table)
        }
        RolloutCmd::Status { app } => one(
            String::new(),
            admin
                .get_rollout(GetRolloutRequest { app })
                .await?
                .into_inner(),
        ),
        RolloutCmd::Approve { app, stage } => one(
            match &stage {
                Some(stage) => format!("stage {stage} of {app} approved\n"),
                None => format!("{app}: approved what waited\n"),
            },
            admin
                .approve_stage(ApproveStageRequest {
                    app: app.clone(),
                    stage: stage.clone().unwrap_or_default(),
                })
                .await?
                .into_inner(),
        ),
        RolloutCmd::Pause { app } => one(
            format!(
                "{app} paused: its rollouts stay where they are until `flotilla rollout resume {app}`\n"
            ),
            admin
                .pause_rollout(PauseRolloutRequest { app: app.clone() })
                .await?
                .into_inner(),
        ),
        RolloutCmd::Resume { app } => one(
            format!("{app} resumed\n"),
            admin
                .resume_rollout(ResumeRolloutRequest { app: app.clone() })
                .await?
                .into_inner(),
        ),
        RolloutCmd::Rollback { app, to } => {
            let r = admin
                .rollback_rollout(RollbackRolloutRequest {
                    app: app.clone(),
                    to: to.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let done = if r.message.contains("each cluster back") {
                format!(
                    "{app} rolled back: each cluster that received {} returns to what it ran before\n",
                    flotilla_proto::revision::short(&r.revision)
                )
            } else {
                format!(
                    "{app} rolled back to {}: every cluster returns to it\n",
                    r.last_good_revision
                )
            };
            one(done, r)
        }
    })
}
