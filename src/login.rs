//! Logins that need a user: the device-code flow (a code to approve elsewhere, polled in
//! the background) and browser flows (a redirect to the vendor and back to
//! `/-/callback/NAME`). At most one login is pending per upstream; starting another
//! replaces it. A completed login puts its credential in the upstream's `TokenCell`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::providers::{BrowserLogin, CallbackParams, LoginMethod, ProviderError};
use crate::status::{DeviceView, LoginStarted};
use crate::tokens::TokenCell;

enum Pending {
    Device {
        view: DeviceView,
        poller: AbortHandle,
        started: Instant,
    },
    Browser(Arc<BrowserLogin>),
}

#[derive(Default)]
pub struct Logins {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Logins {
    /// Starts a login for `tokens`' upstream. `redirect_uri` is tokenproxy's callback for it.
    pub async fn start(
        self: &Arc<Self>,
        tokens: &Arc<TokenCell>,
        redirect_uri: &str,
    ) -> Result<LoginStarted, ProviderError> {
        let upstream = tokens.upstream().to_owned();
        match tokens.provider().login_method() {
            LoginMethod::Direct => {
                tokens
                    .refresh()
                    .await
                    .map_err(|unavailable| unavailable.cause)?;
                Ok(LoginStarted::Direct)
            }
            LoginMethod::DeviceCode => {
                let authorization = tokens.provider().start_device_login().await?;
                let view = DeviceView {
                    user_code: authorization.user_code.clone(),
                    verification_uri: authorization.verification_uri.clone(),
                    verification_uri_complete: authorization.verification_uri_complete.clone(),
                    expires_in: authorization.expires_in.as_secs(),
                    interval: authorization.interval.as_secs(),
                };
                tracing::info!(
                    %upstream,
                    user_code = %view.user_code,
                    verification_uri = %view.verification_uri,
                    "device login started: approve the code at the verification URI"
                );
                let logins = Arc::clone(self);
                let cell = Arc::clone(tokens);
                let poller = tokio::spawn(async move {
                    match cell.provider().finish_device_login(&authorization).await {
                        Ok(credential) => {
                            cell.install(credential).await;
                        }
                        Err(cause) => {
                            cell.record_failure(&cause);
                        }
                    }
                    logins
                        .pending
                        .lock()
                        .expect("poisoned")
                        .remove(cell.upstream());
                });
                self.replace(
                    &upstream,
                    Pending::Device {
                        view: view.clone(),
                        poller: poller.abort_handle(),
                        started: Instant::now(),
                    },
                );
                Ok(LoginStarted::DeviceCode(view))
            }
            LoginMethod::Browser => {
                let login = tokens.provider().start_browser_login(redirect_uri)?;
                let authorize_url = login.authorize_url.clone();
                self.replace(&upstream, Pending::Browser(Arc::new(login)));
                Ok(LoginStarted::Browser { authorize_url })
            }
        }
    }

    fn replace(&self, upstream: &str, pending: Pending) {
        let previous = self
            .pending
            .lock()
            .expect("poisoned")
            .insert(upstream.to_owned(), pending);
        if let Some(Pending::Device { poller, .. }) = previous {
            poller.abort();
        }
    }

    /// Completes a browser login from the vendor's redirect. A callback whose `state` does
    /// not match leaves the pending login alone, so a forged callback cannot cancel it.
    pub async fn callback(
        &self,
        tokens: &TokenCell,
        params: &CallbackParams,
    ) -> Result<(), ProviderError> {
        let login = {
            let mut pending = self.pending.lock().expect("poisoned");
            match pending.get(tokens.upstream()) {
                Some(Pending::Browser(login))
                    if params.get("state") == Some(login.state.as_str()) =>
                {
                    let login = Arc::clone(login);
                    pending.remove(tokens.upstream());
                    login
                }
                Some(Pending::Browser(_)) => {
                    return Err(ProviderError::Rejected(
                        "the callback's state does not match the login that was started".into(),
                    ))
                }
                _ => {
                    return Err(ProviderError::Rejected(
                        "no login is waiting for this callback; start one first".into(),
                    ))
                }
            }
        };
        let credential = tokens
            .provider()
            .finish_browser_login(&login, params)
            .await?;
        tokens.install(credential).await;
        Ok(())
    }

    /// The device login waiting for approval, with its remaining time.
    pub fn pending_device(&self, upstream: &str) -> Option<DeviceView> {
        match self.pending.lock().expect("poisoned").get(upstream) {
            Some(Pending::Device { view, started, .. }) => {
                let mut view = view.clone();
                view.expires_in = view.expires_in.saturating_sub(started.elapsed().as_secs());
                Some(view)
            }
            _ => None,
        }
    }

    /// Drops a pending login (logout).
    pub fn cancel(&self, upstream: &str) {
        if let Some(Pending::Device { poller, .. }) =
            self.pending.lock().expect("poisoned").remove(upstream)
        {
            poller.abort();
        }
    }
}
