//! The states of an app on a cluster, of a rollout and of its stages. The enums of the
//! `flotilla.v1` protocol are the one Rust type of each, shared by hub, agent and CLI; here they
//! gain the lower-case words the CLI prints and the hub stores (`applied`, `waiting_approval`),
//! and "applied and healthy at revision R" gets its one definition ([`AppState::healthy_at`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::v1::{Health, ObjectHealth, Phase, RolloutState, StageState};

/// A word that names no variant of a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {word:?} (expected one of: {expected})")]
pub struct UnknownState {
    pub kind: &'static str,
    pub word: String,
    pub expected: String,
}

/// Gives a protocol enum its words: `as_str`, `Display`, `FromStr`, serde as the word.
macro_rules! words {
    ($ty:ident, $kind:literal { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in protocol order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The lower-case word (what the CLI prints and the hub stores).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $word),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownState;

            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $($word => Ok($ty::$variant),)+
                    _ => Err(UnknownState {
                        kind: $kind,
                        word: s.to_string(),
                        expected: [$($word),+]
                            .iter()
                            .filter(|w| !w.is_empty())
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", "),
                    }),
                }
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let word = String::deserialize(d)?;
                word.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

words!(Phase, "phase" {
    Unspecified => "",
    Applying => "applying",
    Applied => "applied",
    Failed => "failed",
    Removed => "removed",
});

words!(Health, "health" {
    Unknown => "unknown",
    Healthy => "healthy",
    Progressing => "progressing",
    Degraded => "degraded",
});

words!(ObjectHealth, "object health" {
    Unknown => "unknown",
    Current => "current",
    InProgress => "in_progress",
    Failed => "failed",
});

words!(RolloutState, "rollout state" {
    None => "",
    Progressing => "progressing",
    WaitingApproval => "waiting_approval",
    Succeeded => "succeeded",
    Failed => "failed",
    RolledBack => "rolled_back",
    Superseded => "superseded",
    Paused => "paused",
});

words!(StageState, "stage state" {
    Pending => "pending",
    Progressing => "progressing",
    Soaking => "soaking",
    WaitingApproval => "waiting_approval",
    Succeeded => "succeeded",
    Failed => "failed",
});

impl ObjectHealth {
    /// How bad: the worst of several objects is the one with the highest rank (failed, then
    /// unknown, then in progress, then current).
    pub fn rank(self) -> u8 {
        match self {
            ObjectHealth::Current => 0,
            ObjectHealth::InProgress => 1,
            ObjectHealth::Unknown => 2,
            ObjectHealth::Failed => 3,
        }
    }
}

impl RolloutState {
    /// Still moving (or waiting for a person).
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            RolloutState::Progressing | RolloutState::WaitingApproval | RolloutState::Paused
        )
    }
}

/// An app's state on one cluster, as some party last saw it: the revision, phase and health an
/// agent reported.
pub trait AppState {
    /// The revision running (as reported), its phase and its health.
    fn reported(&self) -> (&str, Phase, Health);

    /// Every object of the running revision was accepted by the cluster and is current.
    fn healthy(&self) -> bool {
        let (_, phase, health) = self.reported();
        phase == Phase::Applied && health == Health::Healthy
    }

    /// "Applied and healthy at revision R": the cluster runs `revision`, every object of it was
    /// accepted and is current. The one definition of what promotion, status and metrics count
    /// as done.
    fn healthy_at(&self, revision: &str) -> bool {
        self.reported().0 == revision && self.healthy()
    }
}

impl AppState for crate::v1::AppStatus {
    fn reported(&self) -> (&str, Phase, Health) {
        (&self.revision, self.phase(), self.health())
    }
}

impl AppState for crate::v1::ClusterApp {
    fn reported(&self) -> (&str, Phase, Health) {
        (&self.revision, self.phase(), self.health())
    }
}

impl AppState for crate::v1::AppCluster {
    fn reported(&self) -> (&str, Phase, Health) {
        (&self.applied_revision, self.phase(), self.health())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_text_and_json() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>(), Ok(*p));
            let json = serde_json::to_string(p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<Phase>(&json).unwrap(), *p);
        }
        for s in RolloutState::ALL {
            assert_eq!(s.to_string().parse::<RolloutState>(), Ok(*s));
        }
        for s in StageState::ALL {
            assert_eq!(s.to_string().parse::<StageState>(), Ok(*s));
        }
        assert_eq!(RolloutState::RolledBack.as_str(), "rolled_back");
        assert_eq!(StageState::WaitingApproval.as_str(), "waiting_approval");
        assert_eq!(ObjectHealth::InProgress.as_str(), "in_progress");
    }

    #[test]
    fn an_unknown_word_is_refused_with_the_expected_ones() {
        let e = "done".parse::<StageState>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown stage state \"done\" (expected one of: pending, progressing, soaking, \
             waiting_approval, succeeded, failed)"
        );
        assert!(serde_json::from_str::<Health>("\"fine\"").is_err());
    }

    #[test]
    fn healthy_at_needs_the_revision_applied_and_healthy() {
        let mut a = crate::v1::AppStatus {
            revision: "r2".into(),
            ..Default::default()
        };
        a.set_phase(Phase::Applied);
        a.set_health(Health::Healthy);
        assert!(a.healthy_at("r2"));
        assert!(!a.healthy_at("r1"));
        a.set_health(Health::Progressing);
        assert!(!a.healthy_at("r2"));
        a.set_health(Health::Healthy);
        a.set_phase(Phase::Failed);
        assert!(!a.healthy_at("r2"));
    }

    #[test]
    fn the_worst_object_ranks_highest() {
        let worst = [
            ObjectHealth::Current,
            ObjectHealth::Failed,
            ObjectHealth::InProgress,
        ]
        .into_iter()
        .max_by_key(|h| h.rank());
        assert_eq!(worst, Some(ObjectHealth::Failed));
        assert!(ObjectHealth::Unknown.rank() > ObjectHealth::InProgress.rank());
    }
}
