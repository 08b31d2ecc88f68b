//! TokenReviews, remembered. Every call of the control plane presents a
//! token, and a person's call would review it twice (as a sidecar's, then
//! as a Kubernetes credential): without a cache that is a TokenReview per
//! call to the API server, which anyone holding any token can drive.
//!
//! A review is kept under a SHA-256 of the audience asked and the token
//! (never the token itself): an accepted one for at most [`ACCEPTED_FOR`]
//! and never past the token's own expiry (its `exp` claim, when it is a
//! JWT), a refused one for [`REFUSED_FOR`] (a token does not become valid;
//! only a review that could not be made is never kept). A revoked token
//! (its pod or service account deleted) is thus still accepted for up to
//! [`ACCEPTED_FOR`]. At most [`MAX_REVIEWS`] are kept: past that, those
//! expired go, then the one expiring first.
//!
//! Only the TokenReview is cached: what RBAC allows (SubjectAccessReviews)
//! is asked every time, so a binding removed takes effect at once.

use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

use crate::bounded::BoundedMap;

/// The longest an accepted review is kept.
pub const ACCEPTED_FOR: Duration = Duration::from_secs(300);
/// How long a refused review is kept.
pub const REFUSED_FOR: Duration = Duration::from_secs(10);
/// The most reviews kept.
pub const MAX_REVIEWS: usize = 10_000;

/// What the API server answered: the user and the audiences the token is
/// for, or why it refused it.
pub type Answer = Result<(UserInfo, Vec<String>), String>;

struct Kept {
    answer: Answer,
    until: Timestamp,
}

/// Reviews kept by a hash of audience and token.
pub struct Reviews(Mutex<BoundedMap<[u8; 32], Kept>>);

impl Default for Reviews {
    fn default() -> Self {
        Reviews(Mutex::new(BoundedMap::new(MAX_REVIEWS)))
    }
}

/// The key of `token` reviewed for `audiences`.
fn key(token: &str, audiences: Option<&[String]>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for audience in audiences.unwrap_or_default() {
        hasher.update(audience.as_bytes());
        hasher.update([0]);
    }
    // Apart from the audiences: `None` (the API server's) is not `[]`.
    hasher.update([u8::from(audiences.is_some()), 0xff]);
    hasher.update(token.as_bytes());
    hasher.finalize().into()
}

/// When `token` expires, if it is a JWT that says (its `exp` claim). The
/// API server has just checked its signature, so its claims are its own.
fn expiry(token: &str) -> Option<Timestamp> {
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    Timestamp::from_second(claims.get("exp")?.as_i64()?).ok()
}

impl Reviews {
    /// The answer kept for `token` and `audiences` at `now`, if any.
    pub fn get(&self, token: &str, audiences: Option<&[String]>, now: Timestamp) -> Option<Answer> {
        let kept = self.0.lock().expect("the reviews lock is never poisoned");
        kept.get(&key(token, audiences))
            .filter(|kept| kept.until > now)
            .map(|kept| kept.answer.clone())
    }

    /// Keeps `answer`, the review of `token` for `audiences` made at `now`,
    /// as long as it may be kept.
    pub fn put(&self, token: &str, audiences: Option<&[String]>, answer: Answer, now: Timestamp) {
        let kept_for = match answer {
            Ok(_) => ACCEPTED_FOR,
            Err(_) => REFUSED_FOR,
        };
        let mut until = now + SignedDuration::try_from(kept_for).expect("minutes fit");
        if answer.is_ok()
            && let Some(expires) = expiry(token)
        {
            until = until.min(expires);
        }
        if until <= now {
            return;
        }
        let mut kept = self.0.lock().expect("the reviews lock is never poisoned");
        let key = key(token, audiences);
        let expired = |kept: &Kept| kept.until <= now;
        if let Err(fresh) = kept.insert(key, Kept { answer, until }, expired) {
            // None expired: the one expiring first makes room.
            kept.forget_least(|kept| kept.until);
            kept.insert(key, fresh, expired).ok();
        }
    }

    /// How many reviews are kept.
    pub fn len(&self) -> usize {
        self.0
            .lock()
            .expect("the reviews lock is never poisoned")
            .len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-12-06T12:00:00Z".parse().unwrap()
    }

    fn later(seconds: i64) -> Timestamp {
        now() + SignedDuration::from_secs(seconds)
    }

    fn accepted(name: &str) -> Answer {
        let user = UserInfo {
            username: Some(name.into()),
            ..UserInfo::default()
        };
        Ok((user, vec!["wopr.dev".into()]))
    }

    /// A JWT (unsigned: only its claims matter here) expiring at `exp`.
    fn jwt(exp: Timestamp) -> String {
        let encode = |json: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
        };
        let header = encode(serde_json::json!({"alg": "RS256"}));
        let claims = encode(serde_json::json!({"exp": exp.as_second(), "sub": "a"}));
        format!("{header}.{claims}.signature")
    }

    #[test]
    fn an_accepted_review_is_kept_for_minutes_and_never_past_the_token() {
        let reviews = Reviews::default();
        reviews.put("opaque", None, accepted("alice"), now());
        assert_eq!(
            reviews.get("opaque", None, later(299)),
            Some(accepted("alice"))
        );
        assert_eq!(reviews.get("opaque", None, later(300)), None, "expired");
        let wopr = ["wopr.dev".to_owned()];
        assert_eq!(
            reviews.get("opaque", Some(&wopr), later(1)),
            None,
            "per audience"
        );

        let short = jwt(later(60));
        reviews.put(&short, None, accepted("bob"), now());
        assert_eq!(reviews.get(&short, None, later(59)), Some(accepted("bob")));
        assert_eq!(
            reviews.get(&short, None, later(60)),
            None,
            "the token's expiry"
        );
        let past = jwt(later(-1));
        reviews.put(&past, None, accepted("carol"), now());
        assert_eq!(reviews.get(&past, None, now()), None, "never kept");
    }

    #[test]
    fn a_refused_review_is_kept_briefly() {
        let reviews = Reviews::default();
        reviews.put("forged", None, Err("invalid".into()), now());
        assert_eq!(
            reviews.get("forged", None, later(9)),
            Some(Err("invalid".into()))
        );
        assert_eq!(reviews.get("forged", None, later(10)), None);
    }

    #[test]
    fn at_most_max_reviews_are_kept_the_first_to_expire_going_first() {
        let reviews = Reviews::default();
        reviews.put("soonest", None, Err("refused".into()), now());
        for n in 1..MAX_REVIEWS {
            reviews.put(&format!("token-{n}"), None, accepted("a"), now());
        }
        assert_eq!(reviews.len(), MAX_REVIEWS);
        reviews.put("one-more", None, accepted("b"), now());
        assert_eq!(reviews.len(), MAX_REVIEWS);
        assert_eq!(reviews.get("soonest", None, now()), None, "evicted");
        assert_eq!(reviews.get("one-more", None, now()), Some(accepted("b")));
    }
}
