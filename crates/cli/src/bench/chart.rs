//! The latency chart, drawn by matplotlib inside a kiln sandbox (kiln's own
//! job): the measured numbers go in as code, the PNG comes back as a display.

use super::methods::Method;
use super::report::Report;
use base64::Engine;
use kiln_core::{Backend, Event, ExecRequest, Outcome};
use kiln_policy::Limits;

const CODE: &str = r##"
import json
import matplotlib.pyplot as plt
data = json.loads(DATA)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
for ax, w in zip(axes, ["W1", "W2"]):
    rows = {r["method"]: r for r in data["rows"] if r["workload"] == w}
    for r in data["rows"]:
        if r["method"] == "kiln-pool" and r["workload"] == w + " to result":
            rows["kiln-pool, to result"] = r
    order = data["order"][:1] + ["kiln-pool, to result"] + data["order"][1:]
    ms = [m for m in order if m in rows]
    if not ms:
        ax.set_visible(False)
        continue
    y = list(range(len(ms)))
    p50 = [rows[m]["p50_ms"] for m in ms]
    p90 = [rows[m]["p90_ms"] for m in ms]
    p99 = [rows[m]["p99_ms"] for m in ms]
    colors = ["#f59f00" if "to result" in m else "#e8590c" if m.startswith("kiln") else "#868e96" for m in ms]
    ax.barh(y, p50, color=colors, height=0.6, label="p50")
    ax.scatter(p90, y, marker="|", s=260, color="#1c1c1c", label="p90", zorder=3)
    ax.scatter(p99, y, marker="x", s=40, color="#1c1c1c", label="p99", zorder=3)
    ax.set_xscale("log")
    ax.set_xlim(min(p50) / 2, max(p99) * 6)
    ax.set_yticks(y)
    ax.set_yticklabels(ms)
    ax.invert_yaxis()
    for yi, v, top in zip(y, p50, p99):
        label = f"{v:.2f} ms" if v < 10 else f"{v:.0f} ms"
        ax.text(top * 1.35, yi, label, va="center", fontsize=9)
    ax.set_title(data["titles"][w], fontsize=10)
    ax.set_xlabel("milliseconds per request (log scale)")
    ax.grid(axis="x", which="major", alpha=0.3)
axes[0].legend(loc="lower right", fontsize=8)
fig.suptitle(data["suptitle"], fontsize=11)
fig.tight_layout()
plt.show()
"##;

pub fn render(backend: &dyn Backend, limits: &Limits, report: &Report) -> Result<Vec<u8>, String> {
    let m = &report.machine;
    let data = serde_json::json!({
        "rows": report.rows,
        "order": Method::ALL.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "titles": {
            "W1": "W1: print(1) in a fresh sandbox",
            "W2": "W2: pandas describe (1000×4) + one plot shown, fresh sandbox",
        },
        "suptitle": format!(
            "kiln bench, {} ({} cores, Linux {}, cgroup {})",
            m.date.get(..10).unwrap_or(&m.date), m.cores, m.kernel, m.cgroup
        ),
    });
    let code = format!(
        "DATA = {}\n{CODE}",
        serde_json::to_string(&data.to_string()).map_err(|e| e.to_string())?
    );
    let result = backend
        .execute(
            &ExecRequest {
                code,
                files: Vec::new(),
            },
            limits,
        )
        .map_err(|e| e.to_string())?;
    if result.outcome != Outcome::Ok {
        let err: String = result
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Stderr { text } => Some(text.as_str()),
                Event::Error { value, .. } => Some(value.as_str()),
                _ => None,
            })
            .collect();
        return Err(format!("outcome {}: {err}", result.outcome.as_str()));
    }
    let png = result
        .events
        .iter()
        .find_map(|e| match e {
            Event::Display { data } => data.get("image/png"),
            _ => None,
        })
        .ok_or("the sandbox showed no PNG")?;
    base64::engine::general_purpose::STANDARD
        .decode(png)
        .map_err(|e| e.to_string())
}
