//! The one place that decides what an authenticated caller may do.
//!
//! Admins (the MCIAS role `admin`) may do everything. Other users may read
//! (mounts, issuers, certificates) and issue certificates, but may not
//! change the service: seal, mount, unmount or create issuers.

use std::fmt;

use crate::error::ApiError;
use crate::mcias::Identity;

/// An operation of the REST API that needs an authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Seal,
    ListMounts,
    Mount,
    Unmount,
    ListIssuers,
    CreateIssuer,
    Issue,
    ListCerts,
    GetCert,
    SignCsr,
    Revoke,
    Renew,
    DeleteIssuer,
}

impl Action {
    pub const ALL: [Action; 13] = [
        Action::Seal,
        Action::ListMounts,
        Action::Mount,
        Action::Unmount,
        Action::ListIssuers,
        Action::CreateIssuer,
        Action::Issue,
        Action::ListCerts,
        Action::GetCert,
        Action::SignCsr,
        Action::Revoke,
        Action::Renew,
        Action::DeleteIssuer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Seal => "seal",
            Action::ListMounts => "list-mounts",
            Action::Mount => "mount",
            Action::Unmount => "unmount",
            Action::ListIssuers => "list-issuers",
            Action::CreateIssuer => "create-issuer",
            Action::Issue => "issue",
            Action::ListCerts => "list-certs",
            Action::GetCert => "get-cert",
            Action::SignCsr => "sign-csr",
            Action::Revoke => "revoke",
            Action::Renew => "renew",
            Action::DeleteIssuer => "delete-issuer",
        }
    }

    /// Returns whether only admins may perform the action.
    pub fn requires_admin(self) -> bool {
        matches!(
            self,
            Action::Seal
                | Action::Mount
                | Action::Unmount
                | Action::CreateIssuer
                | Action::DeleteIssuer
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Returns 403 unless `identity` may perform `action`.
pub fn authorize(identity: &Identity, action: Action) -> Result<(), ApiError> {
    if identity.admin || !action.requires_admin() {
        return Ok(());
    }
    tracing::info!(
        username = %identity.username,
        action = %action,
        "permission denied"
    );
    Err(ApiError::forbidden(format!(
        "permission denied: {action} requires the admin role"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn user(admin: bool) -> Identity {
        Identity {
            username: "bob".to_owned(),
            roles: if admin {
                vec!["admin".to_owned()]
            } else {
                vec!["ops".to_owned()]
            },
            admin,
            expires_at: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn admin_may_do_everything() {
        for action in Action::ALL {
            assert!(authorize(&user(true), action).is_ok(), "{action}");
        }
    }

    #[test]
    fn user_may_read_and_issue() {
        for action in [
            Action::ListMounts,
            Action::ListIssuers,
            Action::Issue,
            Action::ListCerts,
            Action::GetCert,
            Action::SignCsr,
            Action::Revoke,
            Action::Renew,
        ] {
            assert!(authorize(&user(false), action).is_ok(), "{action}");
        }
    }

    #[test]
    fn user_may_not_administer() {
        for action in [
            Action::Seal,
            Action::Mount,
            Action::Unmount,
            Action::CreateIssuer,
            Action::DeleteIssuer,
        ] {
            let error = authorize(&user(false), action).unwrap_err();
            assert_eq!(error.status().as_u16(), 403, "{action}");
            assert!(
                error.message().starts_with("permission denied: "),
                "{action}"
            );
        }
    }
}
