//! The routes, grouped by the layers they pass: `open` ones need no key,
//! `control` ones end within the request timeout, `executions` end by their
//! own wall limit plus a margin.

mod execute;
mod files;
mod info;
mod sessions;

pub(crate) use execute::EXECUTION_MARGIN;
pub(crate) use info::environments_of;

use crate::app::AppState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn open() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(info::health))
        .routes(routes!(info::ready))
        .routes(routes!(info::metrics))
}

pub fn control() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sessions::create, sessions::list))
        .routes(routes!(sessions::get, sessions::close))
        .routes(routes!(sessions::keepalive))
        .routes(routes!(sessions::interrupt))
        .routes(routes!(files::upload, files::list))
        .routes(routes!(files::write, files::read))
        .routes(routes!(info::policy))
        .routes(routes!(info::environments))
}

pub fn executions() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(execute::execute))
        .routes(routes!(execute::session_execute))
}
