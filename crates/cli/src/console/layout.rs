//! The page frame (nav, who is logged in, the logout form), the login page,
//! error pages, and the static CSS and JS compiled into the binary.

use super::auth::User;
use axum::{
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
};
use maud::{html, Markup, DOCTYPE};

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// A whole page: head, nav, `<main>` holding `body`.
pub(super) fn page(title: &str, user: Option<&User>, body: Markup) -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · reelfleet" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                nav {
                    span.brand { "reelfleet" }
                    @if let Some(u) = user {
                        a href="/" { "Overview" }
                        a href="/jobs" { "Jobs" }
                        a href="/dead-letters" { "Dead letters" }
                        span.who { (u.name) " · " (u.role.as_str()) }
                        form #logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(u.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    };
    Html(markup.into_string())
}

/// The login page, with `error` above the form.
pub(super) fn login(error: Option<&str>) -> Html<String> {
    page(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            @if let Some(e) = error { p.error { (e) } }
            form #login method="post" action="/login" {
                label { "User" input type="text" name="username" autocomplete="username" required autofocus; }
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
        },
    )
}

/// A request the console answers with an error page.
#[derive(Debug)]
pub(super) struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        tracing::warn!(error = %format!("{e:#}"), "Console page failed");
        Self::new(StatusCode::BAD_GATEWAY, format!("The fleet did not answer: {e:#}"))
    }
}

impl From<reelfleet_index::IndexError> for Failure {
    fn from(e: reelfleet_index::IndexError) -> Self {
        match e {
            reelfleet_index::IndexError::BadCursor(_) => Self::new(StatusCode::BAD_REQUEST, format!("{e}")),
            e => anyhow::Error::from(e).into(),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = page(
            title,
            None,
            html! { h1 { (title) } p.error { (self.message) } p { a href="/" { "Back to the overview" } } },
        );
        (self.status, body).into_response()
    }
}

pub(super) async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")], CSS).into_response()
}

pub(super) async fn js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")], JS)
        .into_response()
}

/// Milliseconds since the epoch as `2026-12-01 10:04:05`, UTC.
pub(super) fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

/// Dollars, to the tenth of a cent below a dollar.
pub(super) fn usd(v: f64) -> String {
    if v < 1.0 {
        format!("${v:.4}")
    } else {
        format!("${v:.2}")
    }
}
