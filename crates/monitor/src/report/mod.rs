//! Shareable reports of a job: a chart of the loss/eval loss, learning rate and memory (PNG or
//! SVG, drawn with plotters) and a summary (Markdown, or one HTML page with the chart inlined).
//! `finetune-studio report <job>` writes them to files; the server returns them at
//! `GET /jobs/{id}/report?format=...`.

mod chart;
mod data;
mod summary;

pub use chart::{HEIGHT, WIDTH, ema};
pub use data::RunRecord;
pub use summary::facts;

/// The forms a report comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Html,
    Markdown,
    Png,
    Svg,
}

impl ReportFormat {
    pub const ALL: [ReportFormat; 4] = [Self::Html, Self::Markdown, Self::Png, Self::Svg];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "html" => Self::Html,
            "md" | "markdown" => Self::Markdown,
            "png" => Self::Png,
            "svg" => Self::Svg,
            _ => return None,
        })
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Html => "html",
            Self::Markdown => "md",
            Self::Png => "png",
            Self::Svg => "svg",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Html => "text/html; charset=utf-8",
            Self::Markdown => "text/markdown; charset=utf-8",
            Self::Png => "image/png",
            Self::Svg => "image/svg+xml",
        }
    }
}

/// The report of `run` in one format. The Markdown links the chart as `report.svg`, the name
/// `finetune-studio report` gives it.
pub fn render(run: &RunRecord, format: ReportFormat) -> Result<Vec<u8>, String> {
    Ok(match format {
        ReportFormat::Html => summary::html(run, &chart::svg(run)?).into_bytes(),
        ReportFormat::Markdown => summary::markdown(run, Some("report.svg")).into_bytes(),
        ReportFormat::Png => chart::png(run)?,
        ReportFormat::Svg => chart::svg(run)?.into_bytes(),
    })
}
